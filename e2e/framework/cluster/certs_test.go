package cluster

import (
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"os"
	"slices"
	"testing"
)

// TestWritePKI checks what the components rely on: the serving certificate is
// valid for 127.0.0.1 under the CA, and the admin client certificate is in
// system:masters, which RBAC treats as cluster admin.
func TestWritePKI(t *testing.T) {
	p, err := writePKI(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	caPEM, err := os.ReadFile(p.caCert)
	if err != nil {
		t.Fatal(err)
	}
	roots := x509.NewCertPool()
	if !roots.AppendCertsFromPEM(caPEM) {
		t.Fatal("CA certificate does not parse")
	}
	for name, tc := range map[string]struct {
		cert, key string
		usage     x509.ExtKeyUsage
		host      string
	}{
		"serving": {p.servingCert, p.servingKey, x509.ExtKeyUsageServerAuth, "127.0.0.1"},
		"admin":   {p.adminCert, p.adminKey, x509.ExtKeyUsageClientAuth, ""},
	} {
		t.Run(name, func(t *testing.T) {
			pair, err := tls.LoadX509KeyPair(tc.cert, tc.key)
			if err != nil {
				t.Fatalf("key pair does not load: %v", err)
			}
			leaf, err := x509.ParseCertificate(pair.Certificate[0])
			if err != nil {
				t.Fatal(err)
			}
			if _, err := leaf.Verify(x509.VerifyOptions{Roots: roots, DNSName: tc.host, KeyUsages: []x509.ExtKeyUsage{tc.usage}}); err != nil {
				t.Errorf("certificate does not verify under the CA: %v", err)
			}
			if name == "admin" && !slices.Contains(leaf.Subject.Organization, "system:masters") {
				t.Errorf("admin certificate organizations %v lack system:masters", leaf.Subject.Organization)
			}
		})
	}
	for _, f := range []string{p.saPrivate, p.saPublic} {
		data, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		if block, _ := pem.Decode(data); block == nil {
			t.Errorf("%s is not PEM", f)
		}
	}
}
