// Package consumer is decryptd's MQTT intake (paho.mqtt.golang v1.5.1,
// MQTT 3.1.1). It owns the transport only: connecting (mutual TLS, or plain
// TCP where the operator allows it), subscribing, handing each message to a
// Processor, and acknowledging. Decryption, sinks, dead-lettering and retries
// belong to the Processor. A Consumer is an intake.Input and hands
// intake.Messages to an intake.Processor: Source "mqtt", DeviceID read from
// the topic with Options.TopicPattern.
//
// Files by job: consumer.go (the Consumer's lifecycle: New, Run, Ready,
// Shutdown), admit.go (admission on paho's router goroutines, lanes and the
// cached-key fast path), budget.go (the byte budget admission takes from),
// order.go (per-topic workers, retries and the in-order
// acknowledgements), conn.go (the links: connecting, dialing,
// subscribing), wire.go (the buffered, group-committed connection),
// options.go.
//
// # Several connections
//
// A Consumer opens Options.Connections MQTT connections ("links"; default
// GOMAXPROCS/2, between 1 and 8). Each link is its own paho client (its own
// reader and router goroutines), its own persistent session under its own
// client id (ClientID for link 0, "<ClientID>-<n>" for link n), in the same
// shared subscription group, with its own receive order, acknowledgement
// queue and acker. One paho connection reads and routes one message after
// the other (about 60,000 messages/s); several read in parallel. What the
// links share is one admission (the MaxInFlight slots and the byte
// budget, MaxInFlightBytes), the per-topic
// workers (and lanes, if any), and one Processor: a topic always maps to
// the same worker whatever link brought its message. With one connection,
// lanes decrypt beside the router; with several, by default there are no
// lanes: each router hands its messages to the Processor itself (the links
// give the parallelism), so a message costs no goroutine hand-off, and a
// per-worker lock keeps one Processor call per topic at a time across
// routers. Only the oldest unacknowledged message of a link wakes its
// acker when it finishes.
//
// Readiness: Ready is true only while every link is connected and
// subscribed, since the broker keeps a disconnected member of a shared
// group in its rotation and queues that member's share in its session.
// decryptd_mqtt_connection_up, _unacked_messages, _messages_received_total,
// _redelivered_total, _released_total and _reconnects_total carry the
// label connection="0".."N-1"; in-flight, fast-path and acknowledgement
// latency are for the whole consumer. Shutdown stops intake on every link,
// lets each acknowledge its finished prefix on its own connection, then
// disconnects them all.
//
// # Delivery promise
//
// At least once; per topic in order on each connection (see "Order across
// connections" for what holds between connections):
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
//     acknowledgement, all links together, so a slow sink slows intake
//     instead of filling memory. The broker's window (max_inflight_messages)
//     applies to each link: set it to about MaxInFlight/Connections. A link
//     whose router finds no free slot waits (backpressure through TCP), as
//     below.
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
// # Order across connections
//
// The broker decides which member of a shared group gets a message.
// Mosquitto (2.0) round-robins per message over the group's sessions, so
// consecutive messages of one topic usually go to different links; MQTT 5
// (§4.8.2) leaves the choice to the server and its ordering promise (§4.6)
// is per session, so no standard broker behaviour keeps one topic on one
// member (some brokers offer it as an option, e.g. EMQX's hash_topic
// strategy; with it, each topic stays on one link and the order below is
// the publish order). With several replicas in one group this was already
// so between replicas; several links make it so inside a replica as well.
//
// What the consumer keeps: on each link, a topic's messages are processed
// in receive order (the broker's order for that session); and one topic's
// messages, whatever link brought them, are processed one at a time, in
// the order the links' routers handed them over (same lane, same worker).
// Two messages of a topic that arrive at nearly the same moment on two
// links can therefore be processed in the opposite order of their
// publication; in tests with Mosquitto and four links about a quarter of a
// topic's consecutive messages did. The Processor must not rely on
// publication order between messages (decryptd's replay window is a set of
// accepted nonces, not a high-water mark). Connections: 1 keeps the old
// behaviour: one receive order per replica.
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
