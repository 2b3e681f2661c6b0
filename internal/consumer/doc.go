// Package consumer is decryptd's MQTT intake (paho.mqtt.golang v1.5.1,
// MQTT 3.1.1). It owns the transport only: connecting (mutual TLS, or plain
// TCP where the operator allows it), subscribing, handing each message to a
// Processor, and acknowledging. Decryption, sinks, dead-lettering and retries
// belong to the Processor. A Consumer is an intake.Input and hands
// intake.Messages to an intake.Processor: Source "mqtt", DeviceID read from
// the topic with Options.TopicPattern.
//
// Files by job: consumer.go (the Consumer's lifecycle: New, Run, Ready,
// Shutdown), admit.go (admission on paho's router goroutine, lanes and the
// cached-key fast path), budget.go (the byte budget admission takes from),
// order.go (per-topic workers, retries and the in-order
// acknowledgements), conn.go (connecting, dialing, subscribing), wire.go
// (the buffered, group-committed connection), options.go.
//
// # Delivery promise
//
// At least once, per topic in order:
//
//   - Every filter is subscribed at QoS 1, through $share/<group>/<filter>
//     when a shared group is set, on a persistent session (clean session off)
//     under a stable client id, so the broker keeps unacknowledged and queued
//     messages for a replica that restarts. Subscriptions are renewed on every
//     connection.
//   - A message is acknowledged (PUBACK) only after the Processor reported
//     it done with nil, and acknowledgements leave in the order the
//     messages arrived on their connection (MQTT-4.6.0-2): an acknowledgement
//     waits until every earlier message of that connection is done. A message
//     whose connection ended before its acknowledgement is redelivered by the
//     broker with Dup set, so the Processor (its sinks) must tolerate
//     repeats; no acknowledgement is sent for an ended connection.
//   - The consumer writes the PUBACKs itself, a whole finished prefix in one
//     write on the connection's wireConn (paho's own packets are single
//     writes too, so they never interleave), rather than one paho Ack per
//     message; wireConn then groups writes made while one is in progress.
//   - Messages of one topic (the topic carries the device id) are handed
//     to the Processor one at a time in receive order. The intake
//     goroutine hands a message over itself (Processor.TryProcess, which
//     never blocks) when the Processor can take it without waiting (its key
//     is cached) and nothing of its topic's worker is pending; otherwise
//     the topic's worker does (Processor.Process, which may wait for a
//     key), and the topic's later messages queue behind it. A fixed pool
//     of workers serves different topics concurrently. A Processor call
//     returns once the message is handed on (into a sink's next batch);
//     its done callback comes when the sinks hold it, so neither the
//     intake nor a worker waits for a sink's fsync.
//   - At most MaxInFlight messages are held between receipt and
//     acknowledgement, so a slow sink slows intake instead of filling memory.
//     The broker's window (max_inflight_messages) should be at or below it.
//     Mosquitto 2.0.11 does not enforce that window reliably; when it sends
//     more, paho's handler waits for a slot for at most half the keep-alive,
//     then releases (neither processes nor acknowledges) the rest of that
//     connection's messages and, once half the slots are free again, closes
//     the connection so the broker redelivers them.
//   - At most MaxInFlightBytes are held the same way, each message counted
//     as its payload, its topic and MessageOverhead, so that large messages
//     cannot fill memory under the count bound: one Budget per replica,
//     shared by all its connections (Options.Budget). No broker window
//     counts bytes, so with large messages this bound, not the broker's,
//     stops intake: paho's handler waits for room (paho then stops reading
//     the socket, and TCP pushes back on the broker), at most half the
//     keep-alive, then releases as above and reconnects once half the
//     budget is free. A message larger than the whole budget is admitted
//     alone, once nothing else is held.
//   - Shutdown stops intake first (later arrivals are neither processed nor
//     acknowledged and come back after a restart), lets in-flight messages
//     finish and acknowledges them, optionally unsubscribes (for a replica
//     removed for good), and disconnects, all within one deadline; what is
//     unfinished at the deadline stays unacknowledged.
//
// # Why the paho handler runs with OrderMatters(true)
//
// paho calls the handler either on its router goroutine in wire order
// (OrderMatters true) or in a new goroutine per message (false). Per-topic
// order and in-order acknowledgements both need wire order, which the
// per-message goroutines lose to the scheduler. So the handler runs on the
// router and either hands the message over without blocking or enqueues
// it; it never acknowledges (a single acker goroutine does) and blocks only in
// the bounded overflow case above, well inside the keep-alive so paho's
// pings survive. Taking cached-key messages on the router costs no
// goroutine hand-off per message, which at 100k messages per second is
// most of what a decryption costs.
//
// A Consumer is safe for concurrent use: Run once, Ready and Shutdown from
// any goroutine. Nothing here logs or exports payloads.
package consumer
