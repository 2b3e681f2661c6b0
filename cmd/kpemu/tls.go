package main

import (
	"crypto/tls"
	"errors"
	"os"
	"path/filepath"
	"strings"

	"github.com/decryptd/decryptd/internal/kpemu"
)

// serverTLS is the HTTPS configuration the flags ask for (nil: plain
// HTTP) and the CA file written for -tls.
func serverTLS(on bool, hosts, caOut, certFile, keyFile string) (*tls.Config, string, error) {
	switch {
	case certFile != "" || keyFile != "":
		if on {
			return nil, "", errors.New("-tls makes its own certificate: use it or -tls-cert/-tls-key, not both")
		}
		cfg, err := kpemu.LoadServerConfig(certFile, keyFile)
		return cfg, "", err
	case !on:
		return nil, "", nil
	}
	var names []string
	for _, h := range strings.Split(hosts, ",") {
		if h = strings.TrimSpace(h); h != "" {
			names = append(names, h)
		}
	}
	ca, err := kpemu.NewCA(names...)
	if err != nil {
		return nil, "", err
	}
	if caOut == "" {
		caOut = filepath.Join(os.TempDir(), "kpemu-ca.pem")
	}
	if err := ca.WriteCAFile(caOut); err != nil {
		return nil, "", err
	}
	return ca.ServerConfig(), caOut, nil
}
