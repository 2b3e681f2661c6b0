package mosquittotest

import (
	"bytes"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/decryptd/decryptd/internal/mosquittoproc"
	"github.com/decryptd/decryptd/internal/pki"
)

// Binary is where the Debian package installs the broker.
const Binary = "/usr/sbin/mosquitto"

// Options configure one broker. The zero value gives a TLS-only broker.
type Options struct {
	// Plain adds a plain-TCP listener (TCPURL) that accepts anonymous clients.
	Plain bool
	// MaxInflight is max_inflight_messages (per client, outgoing); default
	// 1000. Note Mosquitto 2.0.11 does not enforce it reliably.
	MaxInflight int
	// MaxQueued is max_queued_messages; default 1000000 so tests never hit
	// Mosquitto's silent drop.
	MaxQueued int
	// Extra is appended to the global part of the config, verbatim.
	Extra string
}

// Broker is one running (or stopped) Mosquitto.
type Broker struct {
	SSLURL string // ssl://127.0.0.1:PORT, mutual TLS
	TCPURL string // tcp://127.0.0.1:PORT when Options.Plain, else ""
	// Server is the broker's certificate; Server.CA verifies it and signs
	// client certificates.
	Server  pki.Files
	CA      *pki.CA
	Dir     string // the test's temp dir holding config, data, certs and log
	LogFile string

	t       testing.TB
	opts    Options
	conf    string
	sslPort int
	tcpPort int

	mu   sync.Mutex
	proc *mosquittoproc.Process
}

// Start starts a broker for t and registers its shutdown with t.Cleanup.
func Start(t testing.TB, o Options) *Broker {
	t.Helper()
	if _, err := os.Stat(Binary); err != nil {
		t.Fatalf("mosquitto not found at %s (%v): run the project's test command, ./scripts/test.sh (make test), which installs it", Binary, err)
	}
	if o.MaxInflight <= 0 {
		o.MaxInflight = 1000
	}
	if o.MaxQueued <= 0 {
		o.MaxQueued = 1000000
	}
	dir := t.TempDir()
	ca, err := pki.NewCA(filepath.Join(dir, "pki"), "mosquittotest CA")
	if err != nil {
		t.Fatal(err)
	}
	srv, err := ca.IssueServer("server")
	if err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(filepath.Join(dir, "data"), 0o700); err != nil {
		t.Fatal(err)
	}
	b := &Broker{
		Server:  srv,
		CA:      ca,
		Dir:     dir,
		LogFile: filepath.Join(dir, "mosquitto.log"),
		t:       t,
		opts:    o,
		conf:    filepath.Join(dir, "mosquitto.conf"),
	}
	t.Cleanup(func() {
		b.Stop()
		if t.Failed() {
			t.Logf("mosquitto log (%s):\n%s", b.LogFile, Tail(b.LogFile, 64<<10))
		}
	})
	// Ports are picked by listening on :0 and closing, so another process
	// can grab one before mosquitto binds it; retry with fresh ports then.
	var lastErr error
	for attempt := 0; attempt < 5; attempt++ {
		b.sslPort, b.tcpPort = freePort(t), 0
		if o.Plain {
			b.tcpPort = freePort(t)
		}
		if err := b.writeConfig(); err != nil {
			t.Fatal(err)
		}
		if lastErr = b.start(); lastErr == nil {
			break
		}
		if !errors.Is(lastErr, errAddrInUse) {
			t.Fatalf("mosquittotest: %v\nlog:\n%s", lastErr, Tail(b.LogFile, 16<<10))
		}
	}
	if lastErr != nil {
		t.Fatalf("mosquittotest: %v", lastErr)
	}
	b.SSLURL = fmt.Sprintf("ssl://127.0.0.1:%d", b.sslPort)
	if o.Plain {
		b.TCPURL = fmt.Sprintf("tcp://127.0.0.1:%d", b.tcpPort)
	}
	return b
}

// ClientCert issues a client certificate with the given CN (the MQTT
// username on the TLS listener).
func (b *Broker) ClientCert(cn string) pki.Files {
	b.t.Helper()
	f, err := b.CA.IssueClient(cn)
	if err != nil {
		b.t.Fatal(err)
	}
	return f
}

// ClientTLS returns a client TLS config with a fresh certificate for cn,
// trusting the broker's CA, TLS 1.2 minimum, server name 127.0.0.1.
func (b *Broker) ClientTLS(cn string) *tls.Config {
	b.t.Helper()
	cfg, err := pki.ClientConfig(b.ClientCert(cn), "127.0.0.1")
	if err != nil {
		b.t.Fatal(err)
	}
	return cfg
}

// Stop stops the broker gracefully (SIGTERM), which saves its persistence
// file, and waits for it to exit. Stopping a stopped broker does nothing.
func (b *Broker) Stop() {
	b.signal(syscall.SIGTERM, 10*time.Second)
}

// Kill stops the broker with SIGKILL: whatever changed since the last
// autosave (one second) is lost, as after a crash.
func (b *Broker) Kill() {
	b.signal(syscall.SIGKILL, 10*time.Second)
}

// Restart stops the broker (if running) and starts it again on the same
// ports with the same persistence file.
func (b *Broker) Restart() {
	b.t.Helper()
	b.Stop()
	var err error
	// The old process is gone, but give the kernel a moment if the port is
	// still held by something else.
	for attempt := 0; attempt < 20; attempt++ {
		if err = b.start(); err == nil || !errors.Is(err, errAddrInUse) {
			break
		}
		time.Sleep(250 * time.Millisecond)
	}
	if err != nil {
		b.t.Fatalf("mosquittotest: restart: %v\nlog:\n%s", err, Tail(b.LogFile, 16<<10))
	}
}

// Running reports whether the broker process is alive.
func (b *Broker) Running() bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.proc.Running()
}

// Log returns the broker's log so far.
func (b *Broker) Log() string {
	data, _ := os.ReadFile(b.LogFile)
	return string(data)
}

// RefusedTLS reports whether a connect error is what a client without an
// acceptable certificate gets from the TLS listener. Under TLS 1.3 the client
// completes its side of the handshake first, so the broker's refusal shows
// up as the alert ("certificate required"), or, when the client's CONNECT
// write races the broker closing the socket, as a reset or broken pipe.
func RefusedTLS(err error) bool {
	if err == nil {
		return false
	}
	s := err.Error()
	for _, want := range []string{"certificate required", "handshake failure", "bad certificate", "connection reset by peer", "broken pipe"} {
		if strings.Contains(s, want) {
			return true
		}
	}
	return false
}

var errAddrInUse = mosquittoproc.ErrAddrInUse

func (b *Broker) writeConfig() error {
	var c strings.Builder
	fmt.Fprintf(&c, "# written by mosquittotest for %s\n", b.t.Name())
	if os.Geteuid() == 0 {
		// Mosquitto drops privileges to user "mosquitto" when started as
		// root, which could not read the 0700 temp dir; stay root instead.
		c.WriteString("user root\n")
	}
	c.WriteString("per_listener_settings false\n")
	fmt.Fprintf(&c, "allow_anonymous %t\n", b.opts.Plain)
	c.WriteString("persistence true\n")
	fmt.Fprintf(&c, "persistence_location %s/\n", filepath.Join(b.Dir, "data"))
	c.WriteString("persistence_file mosquitto.db\n")
	c.WriteString("autosave_interval 1\n")
	fmt.Fprintf(&c, "max_inflight_messages %d\n", b.opts.MaxInflight)
	fmt.Fprintf(&c, "max_queued_messages %d\n", b.opts.MaxQueued)
	c.WriteString("max_queued_bytes 0\n")
	c.WriteString("set_tcp_nodelay true\n")
	c.WriteString("log_dest stderr\n")
	for _, lt := range []string{"error", "warning", "notice", "information", "subscribe", "unsubscribe"} {
		fmt.Fprintf(&c, "log_type %s\n", lt)
	}
	c.WriteString("log_timestamp true\nlog_timestamp_format %H:%M:%S\n")
	c.WriteString("connection_messages true\n")
	if b.opts.Extra != "" {
		c.WriteString(b.opts.Extra + "\n")
	}
	fmt.Fprintf(&c, "\nlistener %d 127.0.0.1\n", b.sslPort)
	fmt.Fprintf(&c, "cafile %s\ncertfile %s\nkeyfile %s\n", b.Server.CA, b.Server.Cert, b.Server.Key)
	c.WriteString("require_certificate true\nuse_identity_as_username true\ntls_version tlsv1.2\n")
	if b.tcpPort != 0 {
		fmt.Fprintf(&c, "\nlistener %d 127.0.0.1\n", b.tcpPort)
	}
	return os.WriteFile(b.conf, []byte(c.String()), 0o600)
}

// start launches the process and waits until every listener accepts a TCP
// connection, or the process exits (errAddrInUse if it could not bind).
func (b *Broker) start() error {
	addrs := []string{net.JoinHostPort("127.0.0.1", strconv.Itoa(b.sslPort))}
	if b.tcpPort != 0 {
		addrs = append(addrs, net.JoinHostPort("127.0.0.1", strconv.Itoa(b.tcpPort)))
	}
	p, err := mosquittoproc.Start([]string{Binary, "-c", b.conf}, b.LogFile, addrs...)
	if err != nil {
		return err
	}
	b.mu.Lock()
	b.proc = p
	b.mu.Unlock()
	return nil
}

func (b *Broker) signal(sig syscall.Signal, wait time.Duration) {
	b.mu.Lock()
	p := b.proc
	b.mu.Unlock()
	p.Stop(sig, wait)
}

func freePort(t testing.TB) int {
	t.Helper()
	port, err := mosquittoproc.FreePort()
	if err != nil {
		t.Fatal(err)
	}
	return port
}

// Tail returns the last max bytes of the file at path (from a line
// start), for a failing test's log.
func Tail(path string, max int) string {
	data, err := os.ReadFile(path)
	if err != nil {
		return fmt.Sprintf("(no log: %v)", err)
	}
	if len(data) > max {
		data = data[len(data)-max:]
		if i := bytes.IndexByte(data, '\n'); i >= 0 {
			data = data[i+1:]
		}
		return "...\n" + string(data)
	}
	return string(data)
}
