package bench

import (
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/decryptd/decryptd/internal/mosquittoproc"
	"github.com/decryptd/decryptd/internal/pki"
)

// MosquittoBinary is where the Debian package installs the broker (used
// when MosquittoPath is empty and none is on PATH).
const MosquittoBinary = "/usr/sbin/mosquitto"

// BrokerOptions configure the benchmark's broker. Both drains of a run use
// one broker, so they see the same configuration.
type BrokerOptions struct {
	// Dir holds the config, certificates, persistence file and log.
	Dir string
	// MaxInflight is max_inflight_messages (the broker's per-client window
	// of unacknowledged outgoing QoS 1 messages).
	MaxInflight int
	// MaxQueued is max_queued_messages; it must exceed the backlog, or
	// Mosquitto drops the excess silently.
	MaxQueued int
	// Autosave is autosave_interval in seconds: how often Mosquitto writes
	// its whole persistence file while anything changed.
	Autosave int
	// CPUs, when set, is a taskset(1) CPU list Mosquitto runs on (e.g. "1"),
	// so that it does not share CPUs with the drainer started under
	// "taskset -c 0".
	CPUs string
	// Plain adds a plain-TCP listener on 127.0.0.1 (PlainURL) that accepts
	// clients without a certificate, for drains without TLS (as issue 17's
	// figures were taken); the mutual-TLS listener stays.
	Plain bool
}

// Broker is a Mosquitto process with one mutual-TLS listener on 127.0.0.1,
// configured as internal/testutil/mosquittotest configures the test
// brokers (persistence on, autosave 1 s, TLS 1.2 minimum, identity from
// the client certificate), but started without a testing.T.
type Broker struct {
	URL      string // ssl://127.0.0.1:PORT
	PlainURL string // tcp://127.0.0.1:PORT with BrokerOptions.Plain, else empty
	CA       *pki.CA
	Server   pki.Files
	LogFile  string
	conf     string
	cpus     string
	proc     *mosquittoproc.Process
}

// StartBroker writes the configuration and starts Mosquitto, retrying with
// a fresh port if the one picked was taken meanwhile.
func StartBroker(o BrokerOptions) (*Broker, error) {
	if _, err := os.Stat(mosquittoBin()); err != nil {
		return nil, fmt.Errorf("mosquitto not found at %s (%v): run scripts/test-deps.sh (as root) to install it, or give its path (decryptd-bench -mosquitto)", mosquittoBin(), err)
	}
	if o.MaxInflight <= 0 || o.MaxQueued <= 0 {
		return nil, errors.New("bench: broker needs MaxInflight and MaxQueued")
	}
	if err := os.MkdirAll(filepath.Join(o.Dir, "data"), 0o700); err != nil {
		return nil, err
	}
	ca, err := pki.NewCA(filepath.Join(o.Dir, "pki"), "decryptd-bench CA")
	if err != nil {
		return nil, err
	}
	srv, err := ca.IssueServer("server")
	if err != nil {
		return nil, err
	}
	b := &Broker{CA: ca, Server: srv, LogFile: filepath.Join(o.Dir, "mosquitto.log"), conf: filepath.Join(o.Dir, "mosquitto.conf"), cpus: o.CPUs}
	var lastErr error
	for attempt := 0; attempt < 5; attempt++ {
		port, err := freePort()
		if err != nil {
			return nil, err
		}
		plainPort := 0
		if o.Plain {
			if plainPort, err = freePort(); err != nil {
				return nil, err
			}
		}
		if err := os.WriteFile(b.conf, []byte(brokerConfig(o, srv, port, plainPort)), 0o600); err != nil {
			return nil, err
		}
		if lastErr = b.start(port, plainPort); lastErr == nil {
			b.URL = fmt.Sprintf("ssl://127.0.0.1:%d", port)
			if plainPort != 0 {
				b.PlainURL = fmt.Sprintf("tcp://127.0.0.1:%d", plainPort)
			}
			return b, nil
		}
		if !errors.Is(lastErr, errAddrInUse) {
			break
		}
	}
	return nil, fmt.Errorf("bench: start mosquitto: %w", lastErr)
}

func brokerConfig(o BrokerOptions, srv pki.Files, port, plainPort int) string {
	var c strings.Builder
	c.WriteString("# written by decryptd-bench\n")
	if os.Geteuid() == 0 {
		// Mosquitto would drop to user mosquitto, which cannot read the
		// 0700 working directory.
		c.WriteString("user root\n")
	}
	// Anonymous clients only matter on the plain listener: the TLS one
	// requires a client certificate either way.
	fmt.Fprintf(&c, "per_listener_settings false\nallow_anonymous %t\n", plainPort != 0)
	fmt.Fprintf(&c, "persistence true\npersistence_location %s/\npersistence_file mosquitto.db\nautosave_interval %d\n", filepath.Join(o.Dir, "data"), max(o.Autosave, 1))
	fmt.Fprintf(&c, "max_inflight_messages %d\nmax_queued_messages %d\nmax_queued_bytes 0\n", o.MaxInflight, o.MaxQueued)
	c.WriteString("set_tcp_nodelay true\nlog_dest stderr\nlog_type error\nlog_type warning\nlog_type notice\nlog_type information\n")
	c.WriteString("log_timestamp true\nlog_timestamp_format %H:%M:%S\nconnection_messages true\n")
	fmt.Fprintf(&c, "\nlistener %d 127.0.0.1\n", port)
	fmt.Fprintf(&c, "cafile %s\ncertfile %s\nkeyfile %s\n", srv.CA, srv.Cert, srv.Key)
	c.WriteString("require_certificate true\nuse_identity_as_username true\ntls_version tlsv1.2\n")
	if plainPort != 0 {
		fmt.Fprintf(&c, "\nlistener %d 127.0.0.1\n", plainPort)
	}
	return c.String()
}

var errAddrInUse = mosquittoproc.ErrAddrInUse

func (b *Broker) start(port, plainPort int) error {
	argv := []string{mosquittoBin(), "-c", b.conf}
	if b.cpus != "" {
		argv = append([]string{"taskset", "-c", b.cpus}, argv...)
	}
	addrs := []string{net.JoinHostPort("127.0.0.1", strconv.Itoa(port))}
	if plainPort != 0 {
		addrs = append(addrs, net.JoinHostPort("127.0.0.1", strconv.Itoa(plainPort)))
	}
	p, err := mosquittoproc.Start(argv, b.LogFile, addrs...)
	if err != nil {
		return err
	}
	b.proc = p
	return nil
}

// ClientTLS issues a client certificate for cn and returns its files and
// a TLS configuration trusting the broker's CA.
func (b *Broker) ClientTLS(cn string) (pki.Files, *tls.Config, error) {
	f, err := b.CA.IssueClient(cn)
	if err != nil {
		return pki.Files{}, nil, err
	}
	cfg, err := pki.ClientConfig(f, "127.0.0.1")
	if err != nil {
		return pki.Files{}, nil, err
	}
	return f, cfg, nil
}

// Pid is the broker's process id.
func (b *Broker) Pid() int { return b.proc.Pid() }

// Stop sends SIGTERM and waits (10 s, then SIGKILL).
func (b *Broker) Stop() {
	if b == nil {
		return
	}
	b.proc.Stop(syscall.SIGTERM, 10*time.Second)
}

func freePort() (int, error) { return mosquittoproc.FreePort() }
