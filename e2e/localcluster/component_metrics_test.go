package localcluster

import (
	"bufio"
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"net/http"

	"k8s.io/client-go/rest"
)

// componentMetrics GETs a control-plane component's /metrics (url is the
// component's base URL) with the suite's admin client certificate, and calls
// line for each line of the exposition.
func componentMetrics(ctx context.Context, url string, line func(string)) error {
	cfg := rest.CopyConfig(local.Config)
	// The schedulers serve with self-signed certificates; the client
	// certificate is what matters here.
	cfg.Insecure = true
	cfg.CAFile, cfg.CAData = "", nil
	transport, err := rest.TransportFor(cfg)
	if err != nil {
		return err
	}
	if tr, ok := transport.(*http.Transport); ok {
		tr.TLSClientConfig = tr.TLSClientConfig.Clone()
		tr.TLSClientConfig.MinVersion = tls.VersionTLS12
		// One client per call: no connection is left idle behind it.
		defer tr.CloseIdleConnections()
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url+"/metrics", nil)
	if err != nil {
		return err
	}
	resp, err := (&http.Client{Transport: transport}).Do(req)
	if err != nil {
		return fmt.Errorf("GET %s/metrics: %w", url, err)
	}
	defer func() { _ = resp.Body.Close() }() // a read response; nothing to learn from closing it
	if resp.StatusCode != http.StatusOK {
		body, _ := io.ReadAll(io.LimitReader(resp.Body, 1024))
		return fmt.Errorf("GET %s/metrics: %s %s", url, resp.Status, body)
	}
	scanner := bufio.NewScanner(resp.Body)
	scanner.Buffer(make([]byte, 1<<20), 1<<20)
	for scanner.Scan() {
		line(scanner.Text())
	}
	if err := scanner.Err(); err != nil {
		return fmt.Errorf("read %s/metrics: %w", url, err)
	}
	return nil
}
