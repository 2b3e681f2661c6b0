package consumer

import (
	"net"
	"testing"

	"go.uber.org/zap"
)

// TestOverflowMarkedAfterLastFreeReconnects covers the order in which a
// link's wait for a slot gives up only after every message in flight has
// finished: no later freeSlot comes, so markOverflow itself must close the
// connection, or the broker keeps the released messages of a connection
// that stays up and never redelivers them.
func TestOverflowMarkedAfterLastFreeReconnects(t *testing.T) {
	b, err := NewBudget(1<<20, nil)
	if err != nil {
		t.Fatal(err)
	}
	l := &link{log: zap.NewNop()}
	c := &Consumer{o: Options{MaxInFlight: 4}, budget: b, links: []*link{l}, log: zap.NewNop(), slots: &Budget{limit: 4}}
	client, server := net.Pipe()
	defer server.Close()
	conn := &trackedConn{Conn: client, closed: make(chan struct{})}

	c.markOverflow(l, conn) // nothing in flight any more: room now

	<-conn.closed // aborted (asynchronously), so paho reconnects and the broker redelivers
	if !conn.aborted.Load() {
		t.Fatal("closed without abort: paho would not reconnect")
	}
	if l.overflowConn.Load() != nil || c.overflowing.Load() != 0 {
		t.Fatalf("overflow still marked: conn %v, overflowing %d", l.overflowConn.Load(), c.overflowing.Load())
	}
}

// TestOverflowMarkedWhileFullWaits: with the slots still held, the mark
// leaves the connection up; the freeSlot that makes room closes it.
func TestOverflowMarkedWhileFullWaits(t *testing.T) {
	b, err := NewBudget(1<<20, nil)
	if err != nil {
		t.Fatal(err)
	}
	l := &link{log: zap.NewNop()}
	c := &Consumer{o: Options{MaxInFlight: 4}, budget: b, links: []*link{l}, log: zap.NewNop(), slots: &Budget{limit: 4}}
	for range 4 {
		if ok, _ := c.slots.take(1); !ok {
			t.Fatal("slot refused")
		}
	}
	client, server := net.Pipe()
	defer server.Close()
	conn := &trackedConn{Conn: client, closed: make(chan struct{})}
	c.markOverflow(l, conn)
	if l.overflowConn.Load() == nil {
		t.Fatal("mark dropped while the consumer is full")
	}
	c.freeSlot(0) // 3 in flight: above half
	if l.overflowConn.Load() == nil {
		t.Fatal("reconnected with 3 of 4 slots held")
	}
	c.freeSlot(0) // 2 in flight: half free
	<-conn.closed
}
