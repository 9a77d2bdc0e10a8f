package hub

import (
	"context"

	"github.com/fanout-dev/fanout/codec"
)

// Broker is what the hub needs from the outside world: a place that assigns
// each publication its stream position, keeps channel history, and delivers
// publications to every node that has an interest in the channel. The hub
// owns the Broker it is given: Hub.Close closes it.
//
// NewMemoryBroker is the single-process implementation and the default. A
// distributed broker (NATS, Redis, ...) must honour the same contract, which
// is what keeps subscribe replies and live delivery free of gaps and
// duplicates:
//
//   - Publish assigns the channel's epoch and next offset (offsets grow by
//     one per channel, starting at 1 in every epoch), stores the publication
//     in history, and only then delivers it. A publication that has been
//     delivered to any node must be visible to a later History call made on
//     that node (store before deliver; history reads are not stale).
//   - Delivery calls BrokerHandler.HandlePublication on every node with an
//     interest in the channel, once per publication, in offset order per
//     channel, never concurrently for one channel, and without gaps while
//     the interest lasts. Calls for different channels may run in parallel.
//   - Subscribe(ch) starts this node's interest before it returns: every
//     publication stored after it returns is delivered to this node.
//     Unsubscribe(ch) ends it. The hub calls them once per channel when its
//     first subscriber arrives and its last one leaves, never concurrently
//     for one channel.
//   - The epoch is a string naming one life of a channel's history; it
//     changes whenever the history (and with it the offset sequence) is
//     lost, and must not change while a node has an interest in the
//     channel unless the history really was lost.
//   - History must stay bounded (by age, bytes or count); when it drops
//     publications it drops a channel's oldest, so that what History
//     returns for a channel is always a run of consecutive offsets ending
//     at the newest, and a recovery reaching into dropped history finds
//     publications missing. A broker that also implements
//     HistoryStats() HistoryStats has it reported in Hub.Stats.
//   - Methods may be called concurrently; HandlePublication must not be
//     called from inside Publish with any lock held that Subscribe,
//     Unsubscribe or History need, other than the channel's own lock (the
//     hub never calls the broker from inside HandlePublication).
type Broker interface {
	// Run starts the broker and registers h, the receiver of every
	// publication delivered to this node. It is called once, by New,
	// before any other method.
	Run(h BrokerHandler) error
	// Publish stores pub in ch's history and delivers it. It takes
	// ownership of pub: it sets pub.Channel, pub.Epoch and pub.Offset, and
	// nobody modifies pub afterwards. It returns the position assigned.
	Publish(ctx context.Context, ch string, pub *codec.Publication) (codec.StreamPosition, error)
	// History returns the channel's current position (epoch and newest
	// offset, 0 when it has none) and publications it holds, oldest first:
	//   - limit == 0: no publications, only the position;
	//   - since == nil: the newest limit publications (all held when
	//     limit < 0);
	//   - since != nil: the publications with offset > since.Offset, the
	//     oldest limit of them (all when limit < 0). since.Epoch is not
	//     compared: the caller compares it with the returned epoch.
	// A channel the broker knows nothing about has the zero position and
	// no publications; History does not create it.
	History(ctx context.Context, ch string, since *codec.StreamPosition, limit int) ([]*codec.Publication, codec.StreamPosition, error)
	// Subscribe starts this node's interest in ch (see above).
	Subscribe(ch string) error
	// Unsubscribe ends this node's interest in ch.
	Unsubscribe(ch string) error
	// Close stops the broker. Calls after Close return ErrClosed.
	Close() error
}

// BrokerHandler receives the publications a Broker delivers to this node.
// The hub registers one with Broker.Run; other code has no reason to
// implement it.
type BrokerHandler interface {
	// HandlePublication fans pub out to the node's subscribers of ch. It
	// never blocks on a subscriber and never calls back into the Broker.
	// pub must not be modified afterwards.
	HandlePublication(ch string, pub *codec.Publication)
}

// PresenceBroker is a Broker that keeps presence across nodes: the hub
// checks for it with a type assertion, and with one it reports every
// node's clients in Presence and pushes other nodes' joins and leaves to
// its presence listeners. Without one (the memory broker) presence covers
// this node's clients only, which on a single node is everyone.
//
// The hub still pushes its own clients' joins and leaves to its own
// listeners itself, as it does without a PresenceBroker; the broker carries
// them to the other nodes and brings theirs back through
// PresenceHandler.HandlePresence (the BrokerHandler the hub registers with
// Run implements it).
//
// Contract:
//   - Join and Leave record that info subscribed to ch on this node (its
//     subscribe completed) or left it. The hub calls them with the
//     channel's lock held, in the order the subscriptions changed, so they
//     must not block or call back into the hub: a broker queues them and
//     applies them in that order per (ch, info.Client). The hub calls Leave
//     only after Join for the same subscription, and info.Client is unique
//     per connection across nodes.
//   - Presence returns the clients subscribed to ch on the other nodes
//     (this node's own the hub lists itself), in no particular order. What
//     a Join or Leave on another node changes shows up after a delay the
//     broker documents (it is not ordered with anything). A broker that
//     cannot answer returns an error wrapping ErrUnavailable.
//   - A node that dies without Leave for its clients: the broker drops
//     them from Presence and delivers their leaves to the other nodes
//     within a bounded time it documents.
//   - Presence state stays bounded: a channel holds at most one entry per
//     subscription, and a dead node's entries expire.
type PresenceBroker interface {
	Broker
	// Join records that info subscribed to ch on this node. It never
	// blocks.
	Join(ch string, info codec.ClientInfo)
	// Leave records that info left ch on this node. It never blocks.
	Leave(ch string, info codec.ClientInfo)
	// Presence returns the clients subscribed to ch on the other nodes.
	Presence(ctx context.Context, ch string) ([]codec.ClientInfo, error)
}

// PresenceHandler receives the joins and leaves of other nodes' clients
// from a PresenceBroker. The hub's BrokerHandler implements it.
type PresenceHandler interface {
	// HandlePresence pushes a join (join true) or leave of info, a client
	// of another node, to this node's presence listeners of ch. A broker
	// calls it from its delivery of ch, never concurrently with
	// HandlePublication for ch; it never blocks and never calls back into
	// the Broker.
	HandlePresence(ch string, join bool, info codec.ClientInfo)
}
