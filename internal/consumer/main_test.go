package consumer

import (
	"log"
	"os"
	"testing"

	mqtt "github.com/eclipse/paho.mqtt.golang"
)

// TestMain turns on paho's own logging when PAHO_DEBUG is set, for
// diagnosing a failing test; paho's loggers are its package variables, so
// production code never touches them.
func TestMain(m *testing.M) {
	if os.Getenv("PAHO_DEBUG") != "" {
		mqtt.DEBUG = log.New(os.Stderr, "PAHO ", log.Lmicroseconds)
		mqtt.ERROR = log.New(os.Stderr, "PAHOERR ", log.Lmicroseconds)
	}
	os.Exit(m.Run())
}
