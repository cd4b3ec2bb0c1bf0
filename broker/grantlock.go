package broker

import (
	"context"
	"fmt"

	"go.etcd.io/etcd/api/v3/etcdserverpb"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/client/v3/concurrency"
	"go.uber.org/zap"
)

// grantMutex is a grant's etcd lock as the fetch holding it sees it: the
// key it put under locks/<grant>/ with its session's lease, and that key's
// create revision. It is concurrency.Mutex's lock (same keys, the oldest
// key holds it), so holders of either exclude each other; what it adds is
// taking the lock and reading the grant's records in one transaction, and
// releasing the lock in the transaction that stores the token. A fetch
// then makes two etcd writes, not three.
type grantMutex struct {
	key string
	rev int64
	// released: a committed transaction deleted key (release), so unlock
	// has nothing left to delete.
	released bool
}

// IsOwner is the comparison that holds while the lock is ours: every write
// made under it is guarded by it.
func (m *grantMutex) IsOwner() clientv3.Cmp {
	return clientv3.Compare(clientv3.CreateRevision(m.key), "=", m.rev)
}

// release is the write that gives the lock up, for the transaction that
// ends the fetch; released must be called when that transaction commits.
func (m *grantMutex) release() clientv3.Op { return clientv3.OpDelete(m.key) }

func (m *grantMutex) releasedBy(resp *clientv3.TxnResponse) {
	if resp.Succeeded {
		m.released = true
	}
}

// grantLock serializes everything that may call the provider for one grant:
// a local mutex (the etcd lock lets the same session in twice) and the
// etcd lock that excludes other replicas. It also reads, under the lock,
// what reads asks for: in the transaction that takes the lock when no one
// else holds it, in a transaction of its own after the wait otherwise. The
// responses are in the order of reads. unlock must be called.
//
// ctx may carry a store budget (withStoreBudget) that taking an unheld
// lock shares with the reads before it; waiting for a held lock is bounded
// by ctx's deadline only.
func (b *Broker) grantLock(ctx context.Context, gid string, reads ...clientv3.Op) (m *grantMutex, read []*etcdserverpb.ResponseOp, unlock func(), err error) {
	v, _ := b.local.LoadOrStore(gid, make(chan struct{}, 1))
	local := v.(chan struct{})
	select {
	case local <- struct{}{}:
	case <-ctx.Done():
		return nil, nil, nil, ctx.Err()
	}
	sess, err := b.session(ctx)
	if err != nil {
		<-local
		return nil, nil, nil, err
	}
	pfx := b.prefix + locksPrefix + gid + "/"
	m = &grantMutex{key: fmt.Sprintf("%s%x", pfx, sess.Lease())}
	unlock = func() {
		if !m.released {
			uctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), b.storeTimeout)
			defer cancel()
			if _, err := b.cli.Delete(uctx, m.key); err != nil {
				// The session's lease releases it at the latest after SessionTTL.
				b.log.Warn("unlock grant", zap.String("grant", gid), zap.Error(err))
			}
		}
		<-local
	}
	// First try without waiting, bounded like any store call: with etcd
	// unreachable the fetch fails within StoreTimeout rather than at its
	// own deadline. Only a lock another fetch holds is waited for.
	tctx, cancel := b.storeCtx(ctx)
	owner := clientv3.OpGet(pfx, clientv3.WithFirstCreate()...)
	resp, err := b.cli.Txn(tctx).If(clientv3.Compare(clientv3.CreateRevision(m.key), "=", 0)).
		Then(append([]clientv3.Op{clientv3.OpPut(m.key, "", clientv3.WithLease(sess.Lease())), owner}, reads...)...).
		Else(append([]clientv3.Op{clientv3.OpGet(m.key), owner}, reads...)...).Commit()
	cancel()
	if err != nil {
		<-local
		return nil, nil, nil, storeError(ctx, "lock grant "+gid, err)
	}
	m.rev = resp.Header.Revision
	if !resp.Succeeded {
		// This session's key is there already (an unlock that failed):
		// it is ours, with its place in the queue.
		m.rev = resp.Responses[0].GetResponseRange().Kvs[0].CreateRevision
	}
	if first := resp.Responses[1].GetResponseRange().Kvs; len(first) == 0 || first[0].CreateRevision == m.rev {
		return m, resp.Responses[2:], unlock, nil
	}
	// Another fetch holds the lock: wait behind it with the key just put
	// (concurrency.Mutex finds it and keeps its place), then read again.
	if err := concurrency.NewMutex(sess, pfx[:len(pfx)-1]).Lock(ctx); err != nil {
		<-local
		return nil, nil, nil, storeError(ctx, "lock grant "+gid, err)
	}
	if len(reads) == 0 {
		return m, nil, unlock, nil
	}
	sctx, cancel := context.WithTimeout(ctx, b.storeTimeout)
	defer cancel()
	rresp, err := b.cli.Txn(sctx).Then(reads...).Commit()
	if err != nil {
		unlock()
		return nil, nil, nil, storeError(ctx, "read under grant lock "+gid, err)
	}
	return m, rresp.Responses, unlock, nil
}

// releaseLater releases a fetch's grant lock without making the fetch's
// callers wait for it: the token is stored (or the failure recorded) by
// then, and the next fetch of the grant, here or on another replica, waits
// for the release as before. The fetch in flight holds the broker open
// (enter), so Close waits for the release too.
func (b *Broker) releaseLater(unlock func()) {
	b.wg.Add(1)
	go func() {
		defer b.wg.Done()
		unlock()
	}()
}
