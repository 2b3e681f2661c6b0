package pki

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"
)

// Default file names of the CA inside its directory.
const (
	CACertFile = "ca.crt"
	CAKeyFile  = "ca.key"
)

// DefaultValidity is how long issued certificates (and a new CA) stay valid.
// Long enough for a demo left running, short enough that a leaked throwaway
// key does not matter for long.
const DefaultValidity = 30 * 24 * time.Hour

// ErrNoCA means LoadCA found no CA files in the directory.
var ErrNoCA = errors.New("pki: no CA in directory")

// Files names the PEM files of one issued identity: the CA certificate that
// verifies the peer, and this side's certificate and private key.
type Files struct {
	CA   string // CA certificate (PEM)
	Cert string // leaf certificate (PEM)
	Key  string // leaf private key (PEM, PKCS#8, mode 0600)
}

// CA is a throwaway certificate authority whose files live in Dir.
type CA struct {
	Dir      string
	CertFile string
	KeyFile  string
	// Validity of certificates issued from now on; DefaultValidity if zero.
	Validity time.Duration

	mu   sync.Mutex
	cert *x509.Certificate
	key  *ecdsa.PrivateKey
}

// NewCA creates a new CA named commonName and writes ca.crt and ca.key into
// dir (created with mode 0700 if missing), replacing any existing CA there.
func NewCA(dir, commonName string) (*CA, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("pki: create %s: %w", dir, err)
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("pki: generate CA key: %w", err)
	}
	serial, err := newSerial()
	if err != nil {
		return nil, err
	}
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		Subject:               pkix.Name{CommonName: commonName, Organization: []string{"decryptd throwaway CA"}},
		NotBefore:             now.Add(-time.Hour), // tolerate clock skew between test processes
		NotAfter:              now.Add(DefaultValidity),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign | x509.KeyUsageDigitalSignature,
		BasicConstraintsValid: true,
		IsCA:                  true,
		MaxPathLenZero:        true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return nil, fmt.Errorf("pki: create CA certificate: %w", err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, fmt.Errorf("pki: parse CA certificate: %w", err)
	}
	ca := &CA{
		Dir:      dir,
		CertFile: filepath.Join(dir, CACertFile),
		KeyFile:  filepath.Join(dir, CAKeyFile),
		cert:     cert,
		key:      key,
	}
	if err := writePair(ca.CertFile, ca.KeyFile, der, key); err != nil {
		return nil, err
	}
	return ca, nil
}

// LoadCA reads the CA written earlier by NewCA into dir, so the demo can keep
// its certificates across runs. It returns ErrNoCA when dir has none.
func LoadCA(dir string) (*CA, error) {
	ca := &CA{Dir: dir, CertFile: filepath.Join(dir, CACertFile), KeyFile: filepath.Join(dir, CAKeyFile)}
	certPEM, err := os.ReadFile(ca.CertFile)
	if errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("%w: %s", ErrNoCA, dir)
	}
	if err != nil {
		return nil, fmt.Errorf("pki: read CA certificate: %w", err)
	}
	keyPEM, err := os.ReadFile(ca.KeyFile)
	if err != nil {
		return nil, fmt.Errorf("pki: read CA key: %w", err)
	}
	pair, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		return nil, fmt.Errorf("pki: load CA key pair %s: %w", dir, err)
	}
	key, ok := pair.PrivateKey.(*ecdsa.PrivateKey)
	if !ok {
		return nil, fmt.Errorf("pki: CA key in %s is not ECDSA", dir)
	}
	cert, err := x509.ParseCertificate(pair.Certificate[0])
	if err != nil {
		return nil, fmt.Errorf("pki: parse CA certificate: %w", err)
	}
	if !cert.IsCA {
		return nil, fmt.Errorf("pki: %s is not a CA certificate", ca.CertFile)
	}
	ca.cert, ca.key = cert, key
	return ca, nil
}

// Certificate returns the CA certificate.
func (ca *CA) Certificate() *x509.Certificate { return ca.cert }

// Pool returns a certificate pool holding only this CA.
func (ca *CA) Pool() *x509.CertPool {
	p := x509.NewCertPool()
	p.AddCert(ca.cert)
	return p
}

// IssueServer issues a server certificate valid for 127.0.0.1, ::1 and
// localhost plus the extra names (DNS names or IP literals), and writes it as
// <name>.crt and <name>.key in the CA directory.
func (ca *CA) IssueServer(name string, extraNames ...string) (Files, error) {
	dns := []string{"localhost"}
	ips := []net.IP{net.IPv4(127, 0, 0, 1), net.IPv6loopback}
	for _, n := range extraNames {
		if ip := net.ParseIP(n); ip != nil {
			ips = append(ips, ip)
		} else if n != "" {
			dns = append(dns, n)
		}
	}
	tmpl := &x509.Certificate{
		Subject:     pkix.Name{CommonName: name},
		DNSNames:    dns,
		IPAddresses: ips,
		KeyUsage:    x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	return ca.issue(name, tmpl)
}

// IssueClient issues a client certificate with the given common name (the
// MQTT username under use_identity_as_username) and writes it as <cn>.crt
// and <cn>.key in the CA directory (characters outside [A-Za-z0-9._-] in the
// file name become '_').
func (ca *CA) IssueClient(commonName string) (Files, error) {
	if commonName == "" {
		return Files{}, errors.New("pki: client certificate needs a common name")
	}
	tmpl := &x509.Certificate{
		Subject:     pkix.Name{CommonName: commonName},
		KeyUsage:    x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	}
	return ca.issue("client-"+commonName, tmpl)
}

func (ca *CA) issue(name string, tmpl *x509.Certificate) (Files, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return Files{}, fmt.Errorf("pki: generate key: %w", err)
	}
	serial, err := newSerial()
	if err != nil {
		return Files{}, err
	}
	validity := ca.Validity
	if validity <= 0 {
		validity = DefaultValidity
	}
	now := time.Now()
	tmpl.SerialNumber = serial
	tmpl.NotBefore = now.Add(-time.Hour)
	tmpl.NotAfter = now.Add(validity)
	if tmpl.NotAfter.After(ca.cert.NotAfter) {
		tmpl.NotAfter = ca.cert.NotAfter // a leaf must not outlive its issuer
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, &key.PublicKey, ca.key)
	if err != nil {
		return Files{}, fmt.Errorf("pki: sign %s: %w", name, err)
	}
	fn := fileName(name)
	if strings.Trim(fn, ".") == "" {
		return Files{}, fmt.Errorf("pki: %q is not usable as a file name", name)
	}
	base := filepath.Join(ca.Dir, fn)
	f := Files{CA: ca.CertFile, Cert: base + ".crt", Key: base + ".key"}
	ca.mu.Lock()
	defer ca.mu.Unlock()
	if err := writePair(f.Cert, f.Key, der, key); err != nil {
		return Files{}, err
	}
	return f, nil
}

// ServerConfig returns a server-side TLS configuration that presents f.Cert
// and requires a client certificate signed by f.CA, TLS 1.2 or newer.
func ServerConfig(f Files) (*tls.Config, error) {
	pool, pair, err := load(f)
	if err != nil {
		return nil, err
	}
	return &tls.Config{
		MinVersion:   tls.VersionTLS12,
		Certificates: []tls.Certificate{pair},
		ClientCAs:    pool,
		ClientAuth:   tls.RequireAndVerifyClientCert,
	}, nil
}

// ClientConfig returns a client-side TLS configuration that trusts only f.CA,
// presents f.Cert and verifies the server as serverName (an empty
// serverName lets crypto/tls use the host of the address dialled).
func ClientConfig(f Files, serverName string) (*tls.Config, error) {
	pool, pair, err := load(f)
	if err != nil {
		return nil, err
	}
	return &tls.Config{
		MinVersion:   tls.VersionTLS12,
		RootCAs:      pool,
		Certificates: []tls.Certificate{pair},
		ServerName:   serverName,
	}, nil
}

// LoadPool reads a PEM file of CA certificates into a pool.
func LoadPool(caFile string) (*x509.CertPool, error) {
	b, err := os.ReadFile(caFile)
	if err != nil {
		return nil, fmt.Errorf("pki: read CA file: %w", err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(b) {
		return nil, fmt.Errorf("pki: %s holds no PEM certificate", caFile)
	}
	return pool, nil
}

func load(f Files) (*x509.CertPool, tls.Certificate, error) {
	pool, err := LoadPool(f.CA)
	if err != nil {
		return nil, tls.Certificate{}, err
	}
	// The error of X509KeyPair never contains key material, only its kind.
	pair, err := tls.LoadX509KeyPair(f.Cert, f.Key)
	if err != nil {
		return nil, tls.Certificate{}, fmt.Errorf("pki: load key pair %s: %w", f.Cert, err)
	}
	return pool, pair, nil
}

func writePair(certFile, keyFile string, der []byte, key *ecdsa.PrivateKey) error {
	pkcs8, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return fmt.Errorf("pki: marshal key: %w", err)
	}
	keyPEM := pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: pkcs8})
	clear(pkcs8)
	defer clear(keyPEM)
	if err := writeFile(keyFile, keyPEM, 0o600); err != nil {
		return err
	}
	return writeFile(certFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o644)
}

// writeFile writes through a temporary file and a rename, so a reader (a
// broker being restarted) sees the old or the new file, never half of one,
// and the mode is right from the first byte.
func writeFile(path string, data []byte, mode os.FileMode) error {
	tmp, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".tmp*")
	if err != nil {
		return fmt.Errorf("pki: write %s: %w", path, err)
	}
	defer os.Remove(tmp.Name()) // no-op after a successful rename
	if err := tmp.Chmod(mode); err != nil {
		tmp.Close()
		return fmt.Errorf("pki: chmod %s: %w", path, err)
	}
	if _, err := tmp.Write(data); err != nil {
		tmp.Close()
		return fmt.Errorf("pki: write %s: %w", path, err)
	}
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("pki: write %s: %w", path, err)
	}
	if err := os.Rename(tmp.Name(), path); err != nil {
		return fmt.Errorf("pki: write %s: %w", path, err)
	}
	return nil
}

func newSerial() (*big.Int, error) {
	s, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	if err != nil {
		return nil, fmt.Errorf("pki: serial: %w", err)
	}
	return s.Add(s, big.NewInt(1)), nil // never zero
}

func fileName(s string) string {
	return strings.Map(func(r rune) rune {
		switch {
		case r >= 'a' && r <= 'z', r >= 'A' && r <= 'Z', r >= '0' && r <= '9', r == '.', r == '-', r == '_':
			return r
		}
		return '_'
	}, s)
}
