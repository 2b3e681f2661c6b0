// Package mqttstore holds the paho.mqtt.golang Store decryptd's clients use
// instead of paho's MemoryStore. paho keeps every in-flight packet in its
// store to resend it after a reconnect. decryptd's MQTT clients need none of
// that: the consumer's broker session keeps unacknowledged messages (and
// paho's copy cost a locked map insert and delete per message), and the
// MQTT sink re-publishes what was not acknowledged itself (paho's own
// resend raced it).
package mqttstore
