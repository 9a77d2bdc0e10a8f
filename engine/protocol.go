package engine

import (
	"context"
	"errors"

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
	if err := codec.DecodeCommand(c.enc, msg, &cmd); err != nil {
		var ce *codec.CommandError
		if errors.As(err, &ce) {
			s.replyError(c, &cmd, ce.Code, ce.Message)
			return nil
		}
		return errNotObject
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
	default:
		s.replyError(c, &cmd, codec.CodeUnknownOp, "unknown op")
	}
	return nil
}

func (s *Server) subscribe(c *Conn, cmd *codec.Command) {
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
	c.subs = append(c.subs, ch)
}

func (s *Server) unsubscribe(c *Conn, cmd *codec.Command) {
	for i, sub := range c.subs {
		if sub != string(cmd.Channel) {
			continue
		}
		if err := s.hub.Unsubscribe(c, sub); err != nil && !errors.Is(err, hub.ErrNotSubscribed) {
			s.replyHubError(c, cmd, err)
			return
		}
		last := len(c.subs) - 1
		c.subs[i] = c.subs[last]
		c.subs[last] = ""
		c.subs = c.subs[:last]
		s.replyOK(c, cmd)
		return
	}
	s.replyError(c, cmd, codec.CodeBadRequest, "not subscribed to "+string(cmd.Channel))
}

func (s *Server) publish(c *Conn, cmd *codec.Command) {
	pos, err := s.hub.Publish(context.Background(), string(cmd.Channel), cmd.Data, c.enc, c.info)
	if err != nil {
		s.replyHubError(c, cmd, err)
		return
	}
	if cmd.HasID {
		f := wsframe.Get()
		f.B = codec.AppendPublishOK(f.B, c.enc, cmd.ID, pos.Offset)
		c.Send(f.Finish(c.dataOpCode()))
	}
}

func (s *Server) presence(c *Conn, cmd *codec.Command) {
	clients, err := s.hub.Presence(string(cmd.Channel))
	if err != nil {
		s.replyHubError(c, cmd, err)
		return
	}
	if cmd.HasID {
		f := wsframe.Get()
		f.B = codec.AppendPresenceOK(f.B, c.enc, cmd.ID, clients)
		c.Send(f.Finish(c.dataOpCode()))
	}
}

func (s *Server) history(c *Conn, cmd *codec.Command) {
	pos, pubs, err := s.hub.History(string(cmd.Channel), cmd.Limit)
	if err != nil {
		s.replyHubError(c, cmd, err)
		return
	}
	if cmd.HasID {
		f := wsframe.Get()
		f.B = codec.AppendHistoryOK(f.B, c.enc, cmd.ID, pos, pubs)
		c.Send(f.Finish(c.dataOpCode()))
	}
}

func (s *Server) replyOK(c *Conn, cmd *codec.Command) {
	if !cmd.HasID {
		return
	}
	f := wsframe.Get()
	f.B = codec.AppendOK(f.B, c.enc, cmd.ID)
	c.Send(f.Finish(c.dataOpCode()))
}

// replyError answers a failed command. It is sent even without an id so
// that a client learns why a command was ignored.
func (s *Server) replyError(c *Conn, cmd *codec.Command, code, message string) {
	s.stats.commandErrors.Add(1)
	f := wsframe.Get()
	f.B = codec.AppendError(f.B, c.enc, cmd.ID, cmd.HasID, code, message)
	c.Send(f.Finish(c.dataOpCode()))
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
	default:
		s.log.Warn("command failed", "op", cmd.Op.String(), "channel", string(cmd.Channel), "err", err)
		s.replyError(c, cmd, codec.CodeInternal, "internal error")
	}
}
