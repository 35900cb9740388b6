package cluster

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"math/big"
	"os"
	"path/filepath"
	"time"

	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"
)

// WriteNodeKubeconfig writes to path a kubeconfig with a client certificate for
// the identity a real kubelet of node nodeName has: user system:node:<nodeName> in
// group system:nodes, signed by the control plane's CA. The API server's Node
// authorizer then gives that kubelet exactly a node's rights (its pods, their
// ResourceClaims), as in a real cluster.
func (cp *ControlPlane) WriteNodeKubeconfig(path, nodeName string) error {
	caCertPath := cp.Config.CAFile
	caKeyPath := filepath.Join(filepath.Dir(caCertPath), "ca.key")
	ca, caKey, err := readCA(caCertPath, caKeyPath)
	if err != nil {
		return err
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return fmt.Errorf("generate key for node %s: %w", nodeName, err)
	}
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 62))
	if err != nil {
		return fmt.Errorf("serial for node %s: %w", nodeName, err)
	}
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber: serial,
		Subject:      pkix.Name{CommonName: "system:node:" + nodeName, Organization: []string{"system:nodes"}},
		NotBefore:    now.Add(-time.Hour),
		NotAfter:     now.Add(7 * 24 * time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, &key.PublicKey, caKey)
	if err != nil {
		return fmt.Errorf("sign certificate for node %s: %w", nodeName, err)
	}
	dir := filepath.Dir(path)
	certPath := filepath.Join(dir, "node-"+nodeName+".crt")
	keyPath := filepath.Join(dir, "node-"+nodeName+".key")
	if err := writeCertAndKey(certPath, keyPath, der, key); err != nil {
		return err
	}
	return writeKubeconfig(path, cp.APIServerURL, caCertPath, "system:node:"+nodeName,
		&clientcmdapi.AuthInfo{ClientCertificate: certPath, ClientKey: keyPath})
}

func readCA(certPath, keyPath string) (*x509.Certificate, *ecdsa.PrivateKey, error) {
	certPEM, err := os.ReadFile(certPath)
	if err != nil {
		return nil, nil, fmt.Errorf("read CA certificate: %w", err)
	}
	keyPEM, err := os.ReadFile(keyPath)
	if err != nil {
		return nil, nil, fmt.Errorf("read CA key: %w", err)
	}
	certBlock, _ := pem.Decode(certPEM)
	keyBlock, _ := pem.Decode(keyPEM)
	if certBlock == nil || keyBlock == nil {
		return nil, nil, fmt.Errorf("read CA %s: not PEM", certPath)
	}
	cert, err := x509.ParseCertificate(certBlock.Bytes)
	if err != nil {
		return nil, nil, fmt.Errorf("parse CA certificate %s: %w", certPath, err)
	}
	key, err := x509.ParseECPrivateKey(keyBlock.Bytes)
	if err != nil {
		return nil, nil, fmt.Errorf("parse CA key %s: %w", keyPath, err)
	}
	return cert, key, nil
}
