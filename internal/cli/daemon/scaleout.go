package daemon

// Scale-out: running the daemons on a Redis Cluster (--redis-cluster) and
// on a NATS cluster with replicated JetStream streams (--stream-replicas).

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/url"
	"strings"

	"github.com/redis/go-redis/v9"
	"github.com/spf13/cobra"

	"github.com/cortex-os/core/internal/bus"
	"github.com/cortex-os/core/internal/cli/cmdutil"
	"github.com/cortex-os/core/internal/telemetry"
)

// AddRedisClusterFlag adds --redis-cluster.
func AddRedisClusterFlag(cmd *cobra.Command, cluster *bool) {
	cmd.Flags().BoolVar(cluster, "redis-cluster", false, "--redis-url names a Redis Cluster: the node in the URL plus any ?addr=host:port seeds (redis://:pass@10.0.0.1:6379?addr=10.0.0.2:6379&addr=10.0.0.3:6379)")
}

// AddStreamReplicasFlag adds --stream-replicas.
func AddStreamReplicasFlag(cmd *cobra.Command, replicas *int) {
	cmd.Flags().IntVar(replicas, "stream-replicas", 1, "replicas of the durable JetStream streams: created with this many, and scaled to it when given and they differ (3 on a NATS cluster of 3)")
}

// StreamReplicas is the replica count to ask EnsureStreams for: the flag's
// value when it was given (after checking it), else 0, which keeps the
// replicas of streams that exist and creates missing ones with one.
func StreamReplicas(cmd *cobra.Command, replicas int) (int, error) {
	if !cmd.Flags().Changed("stream-replicas") {
		return 0, nil
	}
	if r := StreamReplicasRange(&replicas); !r.In() {
		return 0, &cmdutil.UsageError{Err: fmt.Errorf("--stream-replicas %d: want %s (%s)", replicas, r.Want, r.Note)}
	}
	return replicas, nil
}

// EnsureStreams connects to NATS once to create the durable streams with
// replicas (see StreamReplicas) before the components connect: their own
// check then finds the streams there.
func EnsureStreams(ctx context.Context, natsEP bus.Endpoint, storage bus.Storage, replicas int, log *slog.Logger) error {
	conn, err := natsEP.Connect(instanceName("streams"), log)
	if err != nil {
		return err
	}
	defer conn.Close()
	return conn.EnsureStreams(ctx, storage, replicas)
}

// checkSeeds refuses ?addr= seeds without --redis-cluster.
func (r RedisEndpoint) checkSeeds() error {
	u, err := url.Parse(r.URL)
	if err == nil && !r.Cluster && u.Query().Has("addr") {
		return &cmdutil.UsageError{Err: fmt.Errorf("redis url %s has ?addr= seeds, which name a Redis Cluster: add --redis-cluster", telemetry.RedactURL(r.URL))}
	}
	return nil
}

// ClusterOptions parses the URL of a Redis Cluster (the node in the URL
// plus its ?addr= seeds; go-redis's ParseClusterURL) and applies the
// password file and TLS files.
func (r RedisEndpoint) ClusterOptions() (*redis.ClusterOptions, error) {
	u, err := url.Parse(r.URL)
	if err != nil {
		return nil, fmt.Errorf("redis url %s: %w (want redis[s]://[user[:password]@]host:port?addr=host:port&addr=host:port)", telemetry.RedactURL(r.URL), telemetry.URLError(err))
	}
	if db := strings.Trim(u.Path, "/"); db != "" && db != "0" {
		return nil, &cmdutil.UsageError{Err: fmt.Errorf("redis url %s names database %s, but a Redis Cluster has only database 0: drop /%s", telemetry.RedactURL(r.URL), db, db)}
	}
	co, err := redis.ParseClusterURL(r.URL)
	if err != nil {
		return nil, fmt.Errorf("redis cluster url %s: %w (want redis[s]://[user[:password]@]host:port?addr=host:port&addr=host:port)", telemetry.RedactURL(r.URL), telemetry.URLError(err))
	}
	if err := r.secrets(&co.Password, &co.TLSConfig); err != nil {
		return nil, err
	}
	return co, nil
}

// client builds the client r names, without dialling, and says whether it
// speaks TLS.
func (r RedisEndpoint) client() (redis.UniversalClient, bool, error) {
	if r.Cluster {
		co, err := r.ClusterOptions()
		if err != nil {
			return nil, false, err
		}
		co.PoolSize = 128 // per node: the store's pipelines fan out over the masters
		return redis.NewClusterClient(co), co.TLSConfig != nil, nil
	}
	ro, err := r.Options()
	if err != nil {
		return nil, false, err
	}
	ro.PoolSize = 256
	return redis.NewClient(ro), ro.TLSConfig != nil, nil
}

// checkTopology says when the server is not what --redis-cluster says, in
// an error that names the flag to change (nil otherwise): a cluster client
// on a single server fails with "cluster support disabled", and a
// single-node client on a cluster node would answer PING and then fail
// with MOVED on most keys.
func (r RedisEndpoint) checkTopology(ctx context.Context, rdb redis.UniversalClient, pingErr error) error {
	if r.Cluster {
		if pingErr != nil && strings.Contains(pingErr.Error(), "cluster support disabled") {
			return errors.New("it is a single Redis server, not a Redis Cluster (cluster support disabled): drop --redis-cluster")
		}
		return nil
	}
	// Only a server that answered can be asked; an ACL user may not be
	// allowed INFO: then nothing can be told here.
	if pingErr == nil {
		info, err := rdb.Info(ctx, "cluster").Result()
		if err == nil && strings.Contains(info, "cluster_enabled:1") {
			return errors.New("it is a node of a Redis Cluster, and one node alone answers only for its own slots (MOVED): add --redis-cluster (with ?addr=host:port for more seed nodes)")
		}
	}
	return nil
}
