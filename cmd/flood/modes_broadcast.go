package main

import (
	"time"
)

// Broadcast mode (also the publishing half of churn and slow): the
// publishers live in worker 0 and publish --rate messages per second in
// total, or, with --rate 0, as fast as each one's --inflight window of
// unacknowledged publishes allows. A publish is acknowledged by its reply
// (fanout) or by the publisher receiving its own broadcast (raw, matched by
// the tag in the payload).

// startPublishers starts one goroutine per publisher.
func (a *agent) startPublishers() {
	if len(a.pubs) == 0 {
		return
	}
	perPub := a.cfg.Rate / float64(a.cfg.Publishers)
	for _, c := range a.pubs {
		w := c.ws.Load()
		if w == nil {
			continue
		}
		a.pubWG.Add(1)
		go func() {
			defer a.pubWG.Done()
			a.runPublisher(c, w, perPub)
		}()
	}
}

// maxBurst bounds how many publishes a rate-limited publisher sends back to
// back when it is behind schedule.
const maxBurst = 1000

// runPublisher publishes until the load phase ends or its connection fails.
func (a *agent) runPublisher(c *client, w *wsConn, rate float64) {
	var buf, scratch []byte
	send := func() bool {
		now := time.Now().UnixNano()
		if a.proto.raw {
			buf = a.proto.appendRaw(buf[:0], now, c.tag)
		} else {
			buf, scratch = a.proto.appendPublish(buf[:0], scratch, c.channel, c.nextID.Add(1), now)
		}
		if err := w.writeFrame(a.proto.opcode(), buf); err != nil {
			return false
		}
		a.ctr.sent.Add(1)
		return true
	}
	stopped := func() bool {
		select {
		case <-a.stopCh:
			return true
		default:
			return false
		}
	}
	if rate <= 0 {
		for !stopped() {
			select {
			case c.window <- struct{}{}:
			case <-a.stopCh:
				return
			}
			if !send() {
				return
			}
		}
		return
	}
	start := time.Now()
	var sent int64
	for !stopped() {
		due := int64(time.Since(start).Seconds()*rate) + 1
		if sent >= due {
			next := start.Add(time.Duration(float64(sent) / rate * float64(time.Second)))
			t := time.NewTimer(time.Until(next))
			select {
			case <-t.C:
			case <-a.stopCh:
				t.Stop()
				return
			}
			continue
		}
		for n := min(due-sent, maxBurst); n > 0; n-- {
			if !send() {
				return
			}
			sent++
		}
	}
}
