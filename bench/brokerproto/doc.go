// Package brokerproto holds the measured prototypes behind the choice of
// the cluster broker (docs/CLUSTER.md): per-channel gap-free offsets on
// NATS JetStream (one stream, a subject per channel, the channel's offset in
// a header, optimistic concurrency with expected-last-subject-sequence) and
// on Redis (one Lua script per publish), plus reading a channel's history.
// It is a module of its own so that the main module does not depend on
// nats-server.
//
//	cd bench/brokerproto && go test -run x -bench . -benchtime 10000x -count 3
//
// The Redis benchmarks start redis-server from PATH.
package brokerproto
