package engine

import (
	"context"
	"errors"
	"math"
	"strconv"
	"time"

	"github.com/fanout-dev/fanout/codec"
	"github.com/fanout-dev/fanout/engine/hub"
	"github.com/fanout-dev/fanout/engine/wsframe"
	"github.com/gobwas/ws"
)

// handleCommand decodes one protocol message and runs it. Replies are queued
// on the connection in the order the commands arrived, because this reader
// goroutine queues each before it reads the next.
func (s *Server) handleCommand(c *Conn, op ws.OpCode, msg []byte) *CloseError {
	if op != c.dataOpCode() {
		if c.enc == codec.JSON {
			return errWrongKindJSON
		}
		return errWrongKindMsgpack
	}
	var cmd codec.Command
	var ce *codec.CommandError
	if err := codec.DecodeCommand(c.enc, msg, &cmd); err != nil && !errors.As(err, &ce) {
		return errNotObject
	}
	// Every command counts, a bad one too (it costs a reply); it is
	// decoded first so that the rate_limited reply carries its id.
	if ok, cerr := s.allowCommand(c); !ok {
		if cerr != nil {
			return cerr
		}
		s.replyError(c, &cmd, codec.CodeRateLimited, "too many commands, slow down")
		return nil
	}
	if ce != nil {
		s.replyError(c, &cmd, ce.Code, ce.Message)
		return nil
	}
	if cmd.Op != codec.OpConnect && c.pending() {
		s.replyError(c, &cmd, codec.CodeUnauthorized, `authenticate first: {"op":"connect","token":"<jwt>"}`)
		return nil
	}
	switch cmd.Op {
	case codec.OpPing:
		s.replyOK(c, &cmd)
	case codec.OpSubscribe:
		s.subscribe(c, &cmd)
	case codec.OpUnsubscribe:
		s.unsubscribe(c, &cmd)
	case codec.OpPublish:
		s.publish(c, &cmd)
	case codec.OpPresence:
		s.presence(c, &cmd)
	case codec.OpHistory:
		s.history(c, &cmd)
	case codec.OpConnect:
		s.connect(c, &cmd)
	case codec.OpRefresh:
		s.refresh(c, &cmd)
	default:
		s.replyError(c, &cmd, codec.CodeUnknownOp, "unknown op")
	}
	return nil
}

// rateLimitStrikes is how far a connection's rate-limited commands may
// outnumber its accepted ones (Conn.cmdStrikes) before it is closed 1008
// "rate limit exceeded". A client that sends at over twice its rate and
// ignores the rate_limited errors gets there; one that overshoots now and
// then, or sends a batch somewhat over its burst, does not.
const rateLimitStrikes = 256

// allowCommand takes a token from the connection's command bucket
// (CommandRate per second, CommandBurst at most). The bucket is kept as
// GCRA, in one integer: cmdTAT is when the bucket will be full again, and
// a command is refused while that is more than a burst's worth of tokens
// away. Nothing runs between commands; the refill is computed from the
// clock at each. It returns false when the bucket is empty, with a close
// reason once the connection has ignored that for rateLimitStrikes
// commands.
func (s *Server) allowCommand(c *Conn) (bool, *CloseError) {
	rate := s.cfg.CommandRate
	if rate < 0 {
		return true, nil
	}
	// Nanoseconds per token, and the backlog a full bucket absorbs,
	// clamped so that no sum below overflows.
	const maxNs = math.MaxInt64 / 4
	interval := int64(min(float64(time.Second)/rate, maxNs))
	tolerance := int64(min(float64(interval)*float64(s.cfg.CommandBurst-1), maxNs))
	now := c.lastRead // this read's time (noteRead): no clock read per command
	tat := max(c.cmdTAT, now)
	if tat-now > tolerance {
		s.stats.rateLimited.Add(1)
		if c.cmdStrikes++; c.cmdStrikes >= rateLimitStrikes {
			return false, errRateLimit
		}
		return false, nil
	}
	c.cmdTAT = tat + max(interval, 1)
	if c.cmdStrikes > 0 {
		c.cmdStrikes--
	}
	return true, nil
}

func (s *Server) subscribe(c *Conn, cmd *codec.Command) {
	if a := c.authn.Load(); a != nil && !a.canSubscribe(cmd.Channel) {
		s.replyError(c, cmd, codec.CodeForbidden, "not allowed to subscribe to "+string(cmd.Channel))
		return
	}
	if limit := s.cfg.MaxSubscriptionsPerConn; limit > 0 && len(c.subs) >= limit && c.findSub(cmd.Channel) < 0 {
		// too_large, not rate_limited: the connection's set of channels
		// is too large, and waiting will not make room; unsubscribing
		// will. (A duplicate goes on to the hub's "already subscribed".)
		s.replyError(c, cmd, codec.CodeTooLarge, "subscription limit reached: at most "+strconv.Itoa(limit)+" channels per connection")
		return
	}
	if !s.applyName(c, cmd) {
		return
	}
	ch := string(cmd.Channel)
	// The hub is the one place that knows subscriptions; it answers a
	// duplicate with ErrAlreadySubscribed.
	req := hub.SubscribeRequest{ID: cmd.ID, HasID: cmd.HasID, Channel: ch, Presence: cmd.Presence}
	if cmd.HasRecover {
		req.Recover = &codec.StreamPosition{Epoch: string(cmd.RecoverEpoch), Offset: cmd.RecoverOffset}
	}
	if err := s.hub.Subscribe(c, req); err != nil {
		s.replyHubError(c, cmd, err)
		return
	}
	c.addSub(ch)
}

func (s *Server) unsubscribe(c *Conn, cmd *codec.Command) {
	i := c.findSub(cmd.Channel)
	if i < 0 {
		s.replyError(c, cmd, codec.CodeBadRequest, "not subscribed to "+string(cmd.Channel))
		return
	}
	if err := s.hub.Unsubscribe(c, c.subs[i]); err != nil && !errors.Is(err, hub.ErrNotSubscribed) {
		s.replyHubError(c, cmd, err)
		return
	}
	c.removeSub(i)
	s.replyOK(c, cmd)
}

// subIndexMin is the number of subscriptions from which a connection
// indexes them in a map (Conn.subIdx); with fewer, a scan of the slice is
// as fast and costs no memory. Below half of it the map is dropped again.
const subIndexMin = 16

// findSub returns the index of channel in c.subs, or -1.
func (c *Conn) findSub(channel []byte) int {
	if c.subIdx != nil {
		if i, ok := c.subIdx[string(channel)]; ok {
			return int(i)
		}
		return -1
	}
	for i, sub := range c.subs {
		if sub == string(channel) {
			return i
		}
	}
	return -1
}

// addSub records a new subscription.
func (c *Conn) addSub(ch string) {
	c.subs = append(c.subs, ch)
	switch {
	case c.subIdx != nil:
		c.subIdx[ch] = int32(len(c.subs) - 1)
	case len(c.subs) >= subIndexMin:
		c.subIdx = make(map[string]int32, 2*len(c.subs))
		for i, sub := range c.subs {
			c.subIdx[sub] = int32(i)
		}
	}
}

// removeSub forgets c.subs[i]; the last subscription takes its place.
func (c *Conn) removeSub(i int) {
	last := len(c.subs) - 1
	moved := c.subs[last]
	if c.subIdx != nil {
		delete(c.subIdx, c.subs[i])
		if i != last {
			c.subIdx[moved] = int32(i)
		}
	}
	c.subs[i] = moved
	c.subs[last] = ""
	c.subs = c.subs[:last]
	switch {
	case len(c.subs) == 0:
		c.subs, c.subIdx = nil, nil // an idle connection holds neither
	case len(c.subs) < subIndexMin/2:
		c.subIdx = nil
	}
}

// publish runs on the connection's reader, which may be netpoll's poller:
// TryPublish never waits for a backlogged channel, whose publishers are
// answered rate_limited instead (replyHubError).
func (s *Server) publish(c *Conn, cmd *codec.Command) {
	if a := c.authn.Load(); a != nil && !a.canPublish(cmd.Channel) {
		s.replyError(c, cmd, codec.CodeForbidden, "not allowed to publish to "+string(cmd.Channel))
		return
	}
	if !s.allowPublish(c, len(cmd.Data)) {
		s.authn.publishLimited.Add(1)
		s.replyError(c, cmd, codec.CodeRateLimited, "publishing too many bytes per second, slow down")
		return
	}
	pos, err := s.hub.TryPublish(context.Background(), string(cmd.Channel), cmd.Data, c.enc, c.info)
	if err != nil {
		s.replyHubError(c, cmd, err)
		return
	}
	if cmd.HasID {
		f := wsframe.Get()
		f.B = codec.AppendPublishOK(f.B, c.enc, cmd.ID, pos.Offset)
		c.sendData(f.Finish(c.dataOpCode()))
	}
}

func (s *Server) presence(c *Conn, cmd *codec.Command) {
	if a := c.authn.Load(); a != nil && !a.canSubscribe(cmd.Channel) {
		s.replyError(c, cmd, codec.CodeForbidden, "not allowed to read the presence of "+string(cmd.Channel))
		return
	}
	clients, err := s.hub.Presence(string(cmd.Channel))
	if err != nil {
		s.replyHubError(c, cmd, err)
		return
	}
	if cmd.HasID {
		f := wsframe.Get()
		f.B = codec.AppendPresenceOK(f.B, c.enc, cmd.ID, clients)
		c.sendData(f.Finish(c.dataOpCode()))
	}
}

func (s *Server) history(c *Conn, cmd *codec.Command) {
	if a := c.authn.Load(); a != nil && !a.canSubscribe(cmd.Channel) {
		s.replyError(c, cmd, codec.CodeForbidden, "not allowed to read the history of "+string(cmd.Channel))
		return
	}
	res, err := s.hub.HistoryFor(string(cmd.Channel), cmd.Limit, c.enc)
	if err != nil {
		s.replyHubError(c, cmd, err)
		return
	}
	if cmd.HasID {
		f := wsframe.Get()
		f.B = codec.AppendHistoryReply(f.B, c.enc, cmd.ID, res.Position, res.Publications, res.Truncated)
		c.sendData(f.Finish(c.dataOpCode()))
	}
}

func (s *Server) replyOK(c *Conn, cmd *codec.Command) {
	if !cmd.HasID {
		return
	}
	f := wsframe.Get()
	f.B = codec.AppendOK(f.B, c.enc, cmd.ID)
	c.sendData(f.Finish(c.dataOpCode()))
}

// replyError answers a failed command. It is sent even without an id so
// that a client learns why a command was ignored.
func (s *Server) replyError(c *Conn, cmd *codec.Command, code, message string) {
	s.stats.commandErrors.Add(1)
	f := wsframe.Get()
	f.B = codec.AppendError(f.B, c.enc, cmd.ID, cmd.HasID, code, message)
	c.sendData(f.Finish(c.dataOpCode()))
}

// replyHubError maps a hub error to its error reply.
func (s *Server) replyHubError(c *Conn, cmd *codec.Command, err error) {
	switch {
	case errors.Is(err, hub.ErrAlreadySubscribed):
		s.replyError(c, cmd, codec.CodeBadRequest, "already subscribed to "+string(cmd.Channel))
	case errors.Is(err, hub.ErrNotSubscribed):
		s.replyError(c, cmd, codec.CodeBadRequest, "not subscribed to "+string(cmd.Channel))
	case errors.Is(err, hub.ErrBadData):
		s.replyError(c, cmd, codec.CodeBadRequest, err.Error())
	case errors.Is(err, hub.ErrBackpressure):
		s.replyError(c, cmd, codec.CodeRateLimited, "channel backlogged, retry later")
	case errors.Is(err, hub.ErrTooLarge):
		s.replyError(c, cmd, codec.CodeTooLarge, "data larger than the maximum message size in some encoding")
	case errors.Is(err, hub.ErrUnavailable):
		s.replyError(c, cmd, codec.CodeUnavailable, "broker unavailable, retry later")
	default:
		s.log.Warn("command failed", "op", cmd.Op.String(), "channel", string(cmd.Channel), "err", err)
		s.replyError(c, cmd, codec.CodeInternal, "internal error")
	}
}
