package mqttstore

import (
	mqtt "github.com/eclipse/paho.mqtt.golang"
	"github.com/eclipse/paho.mqtt.golang/packets"
)

// Discard is an mqtt.Store that keeps nothing.
type Discard struct{}

var _ mqtt.Store = Discard{}

func (Discard) Open()                             {}
func (Discard) Put(string, packets.ControlPacket) {}
func (Discard) Get(string) packets.ControlPacket  { return nil }
func (Discard) All() []string                     { return nil }
func (Discard) Del(string)                        {}
func (Discard) Close()                            {}
func (Discard) Reset()                            {}
