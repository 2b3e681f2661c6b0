// Package mqttsink is the mqtt sink type: records republished at QoS 1 to a
// topic on a broker (paho.mqtt.golang). It lives apart from package sink so
// that the sink contract, and the pipeline that uses it, do not import an
// MQTT client.
//
// Delivery promise: Write returns nil only once the broker sent PUBACK for
// every record of the batch (the broker then owns them, to the durability
// of its own persistence settings); a connection lost during a Write fails
// the Write, and the caller retries the whole batch. Records whose device
// id cannot be a topic level are refused with sink.ErrBadRecord.
//
// The type's configuration is Config (broker, topic, tls), registered in
// package sinktypes by Type.
package mqttsink
