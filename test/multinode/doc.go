// Package multinode holds the scale-out test of CortexOS: a three-node NATS
// cluster whose durable streams have three replicas, a three-master Redis
// Cluster (AOF on), and the daemons (gateway, scheduler, safety kernel, two
// workers) as separate processes pointed at both with --nats-url (the three
// servers, comma-separated), --redis-cluster and --stream-replicas 3. While
// jobs are submitted, the NATS server leading the job stream is killed with
// SIGKILL and brought back, then a Redis master is killed and brought back
// with its data. Afterwards every job the gateway accepted must be in
// exactly one terminal state, and jobs must have completed after each node
// returned; as in test/chaos, at least 90% of the jobs must have been
// accepted, every job that ran must have an ALLOW safety verdict, and no
// component may exit without being killed. Everything listens on 127.0.0.1.
//
// The test is behind the build tag multinode:
//
//	go test -tags multinode -run TestMultiNode -v -timeout 10m ./test/multinode/
//
// or make multinode (bash .ci/chaos.sh multinode), which installs
// redis-server first.
// It builds cortexctl and nats-server itself. Environment:
//
//	MULTINODE_JOBS     jobs to submit (default 3000)
//	MULTINODE_SUBMIT   how long submitting takes (default 36s)
//	MULTINODE_DOWN     how long a killed node stays down (default 3s)
//	MULTINODE_SETTLE   how long to wait afterwards for every job to end (default 90s)
//	MULTINODE_LOGDIR   keep the processes' logs there instead of a temporary folder
package multinode
