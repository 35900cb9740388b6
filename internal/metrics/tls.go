package metrics

import (
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"sync"
	"time"

	certutil "k8s.io/client-go/util/cert"
)

// Names of the certificate and key in a certificate directory: those of a
// Secret of type kubernetes.io/tls mounted as a volume.
const (
	CertFile = "tls.crt"
	KeyFile  = "tls.key"
)

// tlsConfig serves the certificate in certDir, or a self-signed one made now
// when certDir is empty. HTTP/2 is not offered: the metrics endpoint gains
// nothing from it and would be exposed to its stream-reset floods
// (CVE-2023-44487), as kubebuilder's scaffolding reasons too.
func tlsConfig(certDir string) (*tls.Config, error) {
	cfg := &tls.Config{MinVersion: tls.VersionTLS12, NextProtos: []string{"http/1.1"}}
	if certDir == "" {
		// Nothing can verify this certificate; it only keeps the bearer
		// token and the metrics off the wire in the clear.
		certPEM, keyPEM, err := certutil.GenerateSelfSignedCertKey("localhost", []net.IP{{127, 0, 0, 1}}, nil)
		if err != nil {
			return nil, fmt.Errorf("generate self-signed metrics certificate: %w", err)
		}
		cert, err := tls.X509KeyPair(certPEM, keyPEM)
		if err != nil {
			return nil, fmt.Errorf("load self-signed metrics certificate: %w", err)
		}
		cfg.Certificates = []tls.Certificate{cert}
		return cfg, nil
	}
	files := &certFiles{cert: filepath.Join(certDir, CertFile), key: filepath.Join(certDir, KeyFile)}
	// Load once now, so that a missing or bad certificate stops start-up
	// instead of failing every handshake.
	if _, err := files.get(nil); err != nil {
		return nil, err
	}
	cfg.GetCertificate = files.get
	return cfg, nil
}

// certFiles loads a certificate and key and loads them again when either
// file changes, so that a renewed Secret (cert-manager) is served without a
// restart.
type certFiles struct {
	cert, key string

	mu       sync.Mutex
	loaded   *tls.Certificate
	modified [2]time.Time
}

func (f *certFiles) get(*tls.ClientHelloInfo) (*tls.Certificate, error) {
	var modified [2]time.Time
	for i, path := range []string{f.cert, f.key} {
		st, err := os.Stat(path)
		if err != nil {
			return nil, fmt.Errorf("metrics certificate: %w", err)
		}
		modified[i] = st.ModTime()
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.loaded != nil && modified == f.modified {
		return f.loaded, nil
	}
	cert, err := tls.LoadX509KeyPair(f.cert, f.key)
	if err != nil {
		if f.loaded != nil {
			// Half-written during a renewal: keep serving the old one.
			return f.loaded, nil
		}
		return nil, fmt.Errorf("load metrics certificate %s and key %s: %w", f.cert, f.key, err)
	}
	f.loaded, f.modified = &cert, modified
	return f.loaded, nil
}

// errNoClient is returned when secure serving is asked for without a client
// to review tokens with.
var errNoClient = errors.New("secure metrics need a Kubernetes client for TokenReviews and SubjectAccessReviews")
