"""Every supported Redis command through redis-py, unmodified, against a 3-node stackd cluster.

Usage: python3 clients.py HOST:PORT HOST:PORT HOST:PORT PASSWORD
The three addresses are the RESP listeners of three nodes; PASSWORD is a stackd token with
every right. Prints one line per test and "redis-py: N passed, M failed"; exits 1 on a failure.
"""

import sys
import threading
import time
import traceback
import uuid

import redis

ADDRS = [a.rsplit(":", 1) for a in sys.argv[1:4]]
PASSWORD = sys.argv[4]
TESTS = []


def test(fn):
    TESTS.append(fn)
    return fn


def client(node, db=0, protocol=2, **kw):
    host, port = ADDRS[node]
    return redis.Redis(host=host, port=int(port), db=db, password=PASSWORD,
                       protocol=protocol, socket_timeout=10, **kw)


def unique(prefix):
    return f"{prefix}:{uuid.uuid4().hex[:8]}"


def eventually(what, fn, timeout=10.0):
    """Polls fn until it returns something truthy (replication to another node)."""
    deadline = time.monotonic() + timeout
    while True:
        v = fn()
        if v:
            return v
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def raises(exc, fn, match=""):
    try:
        fn()
    except exc as e:
        assert match in str(e), f"{match!r} not in {e!r}"
        return e
    raise AssertionError(f"{exc.__name__} not raised")


@test
def handshake_commands():
    r = client(0)
    assert r.ping() is True
    assert r.echo("hi") == b"hi"
    assert r.client_setname("worker-1") is True
    assert r.client_getname() == "worker-1"
    assert isinstance(r.client_id(), int)
    info = r.info()
    assert info["redis_version"] == "7.2.0" and "stackd_version" in info
    assert r.command_count() > 30
    assert r.execute_command("SELECT", 1) is True
    assert r.execute_command("SELECT", 2) is True
    raises(redis.ResponseError, lambda: r.execute_command("SELECT", 3), "out of range")
    r3 = client(1, protocol=3)
    hello = r3.execute_command("HELLO", 3)
    assert hello[b"proto"] == 3 and hello[b"server"] == b"redis", hello
    assert r3.set("resp3", "x") is True and r3.get("resp3") == b"x" and r3.get("nope") is None


@test
def cache_strings_replicate_to_every_node():
    k = unique("str")
    r1, r3 = client(0), client(2)
    assert r1.set(k, "v1") is True
    assert r1.get(k) == b"v1"  # read your write on the node that took it
    eventually("the write on node 3", lambda: r3.get(k) == b"v1")
    assert r3.set(k, "v2", xx=True, get=True) == b"v1"
    assert r3.get(k) == b"v2"
    assert r1.set(k, "v3", nx=True) is None
    assert r1.set(unique("nx"), "v", nx=True) is True
    assert r1.exists(k, k, "absent") == 2
    assert r1.delete(k, "absent") == 1
    assert r1.get(k) is None
    assert r1.unlink(unique("gone")) == 0


@test
def cache_expiry_options():
    r = client(0)
    k = unique("ttl")
    assert r.set(k, "v", ex=100) is True
    assert 99 <= r.ttl(k) <= 100
    assert 99_000 <= r.pttl(k) <= 100_000
    assert r.set(k, "w", keepttl=True) is True and r.ttl(k) >= 99
    assert r.set(k, "w") is True and r.ttl(k) == -1
    assert r.expire(k, 50) is True and 49 <= r.ttl(k) <= 50
    assert r.pexpire(k, 20_000) is True and r.ttl(k) == 20
    assert r.persist(k) is True and r.ttl(k) == -1
    assert r.persist(k) is False
    assert r.ttl("absent:" + k) == -2 and r.pttl("absent:" + k) == -2
    assert r.expire("absent:" + k, 10) is False
    at = int(time.time()) + 300
    assert r.set(k, "v", exat=at) is True and 295 <= r.ttl(k) <= 300
    assert r.set(k, "v", pxat=at * 1000) is True and 295 <= r.ttl(k) <= 300
    assert r.set(k, "v", px=150) is True
    eventually("the entry to expire", lambda: r.get(k) is None, timeout=5)
    assert r.set(k, "v") and r.expire(k, 0) is True and r.get(k) is None
    raises(redis.ResponseError, lambda: r.set(k, "v", ex=0), "invalid expire time")
    raises(redis.ResponseError, lambda: r.set(k, "v", ex=31 * 86400), "30 days")


@test
def counters_are_atomic():
    r1, r2 = client(0), client(1)
    k = unique("n")
    assert r1.incr(k) == 1
    assert r2.incrby(k, 10) == 11
    assert r1.decr(k) == 10
    assert r2.decrby(k, 4) == 6
    threads = [threading.Thread(target=lambda c=c: [c.incr(k) for _ in range(50)])
               for c in (client(0), client(1), client(2))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert int(r1.get(k)) == 156
    r1.set(k, "abc")
    raises(redis.ResponseError, lambda: r1.incr(k), "not an integer")
    r1.set(k, str(2**63 - 1))
    raises(redis.ResponseError, lambda: r1.incr(k), "overflow")


@test
def mget_mset_scan_dbsize():
    r = client(0)
    p = unique("scan")
    pairs = {f"{p}:{i:03}": str(i) for i in range(25)}
    assert r.mset(pairs) is True
    assert r.mget([f"{p}:000", f"{p}:024", f"{p}:missing"]) == [b"0", b"24", None]
    found = set(r.scan_iter(match=f"{p}:*", count=7))
    assert found == {k.encode() for k in pairs}, found
    assert set(r.scan_iter(match=f"{p}:01?")) == {f"{p}:01{i}".encode() for i in range(10)}
    assert r.dbsize() >= 25
    raises(redis.ResponseError, lambda: r.scan(cursor=12345), "invalid cursor")


@test
def locks_the_redis_way():
    r1, r2 = client(0), client(1)
    lock, me, other = unique("lock"), "token-a", "token-b"
    assert r1.set(lock, me, nx=True, px=30_000) is True
    assert r2.set(lock, other, nx=True, px=30_000) is None  # held: refused on any node
    assert r2.execute_command("DELIFEQ", lock, other) == 0  # not the holder
    assert r1.execute_command("DELIFEQ", lock, me) == 1  # compare-and-delete release
    assert r2.set(lock, other, nx=True, px=30_000) is True
    assert r2.execute_command("DELEX", lock, "IFEQ", other) == 1


@test
def fenced_locks_on_db_2():
    r1, r2 = client(0, db=2), client(2, db=2)
    lock = unique("job")
    assert r1.set(lock, "worker-a", nx=True, px=30_000) is True
    assert r2.set(lock, "worker-b", nx=True, px=30_000) is None
    assert r2.get(lock) == b"worker-a"  # linearizable: the holder, from any node
    assert 29 <= r2.ttl(lock) <= 30
    fence_a = r2.execute_command("STACKD.FENCE", lock, "worker-a")
    assert isinstance(fence_a, int) and fence_a > 0
    assert r2.execute_command("STACKD.FENCE", lock, "worker-b") is None
    assert r2.execute_command("DELIFEQ", lock, "worker-b") == 0
    assert r1.execute_command("DELIFEQ", lock, "worker-a") == 1
    assert r2.get(lock) is None and r2.exists(lock) == 0
    assert r2.set(lock, "worker-b", nx=True, ex=30) is True
    assert r2.execute_command("STACKD.FENCE", lock, "worker-b") > fence_a  # fences only grow
    assert r2.execute_command("DELEX", lock, "IFEQ", "worker-b") == 1
    raises(redis.ResponseError, lambda: r1.set(lock, "x"), "NX and a lease")
    raises(redis.ResponseError, lambda: r1.incr(lock), "db 2 (locks)")


@test
def transactions_apply_as_one():
    r = client(0)
    k = unique("tx")
    with r.pipeline(transaction=True) as p:
        p.set(k, "1").incr(k).incrby(k, 5).delete(k + ":other").mset({k + ":a": "x"})
        assert p.execute() == [True, 2, 7, 0, True]
    assert r.get(k) == b"7" and r.get(k + ":a") == b"x"
    # A command refused while queueing discards the whole transaction.
    with r.pipeline(transaction=True) as p:
        p.set(k, "changed").get(k)
        raises(redis.ResponseError, p.execute, "inside MULTI is not supported")
    assert r.get(k) == b"7"
    raw = client(0)
    raises(redis.ResponseError, lambda: raw.execute_command("EXEC"), "EXEC without MULTI")


@test
def key_value_store_on_db_1_is_linearizable():
    r1, r3 = client(0, db=1), client(2, db=1)
    k = unique("kv")
    assert r1.set(k, "v1") is True
    assert r3.get(k) == b"v1"  # at once, on another node: linearizable read
    assert r3.set(k, "v2", nx=True) is None
    assert r3.set(k + ":ttl", "v", ex=100) is True and 99 <= r1.ttl(k + ":ttl") <= 100
    assert r1.mset({k + ":a": "1", k + ":b": "2"}) is True
    assert r3.mget([k + ":a", k + ":b", k + ":c"]) == [b"1", b"2", None]
    assert set(r3.scan_iter(match=k + ":*")) == {(k + s).encode() for s in (":ttl", ":a", ":b")}
    assert r1.delete(k + ":a", k + ":b") == 2 and r3.exists(k + ":a") == 0
    assert r1.dbsize() >= 2
    raises(redis.ResponseError, lambda: r1.incr(k), "db 0")
    # The cache and the key-value store are apart.
    assert client(0).get(k) is None


@test
def watch_guards_transactions_on_the_key_value_store():
    r1, r2 = client(0, db=1), client(1, db=1)
    k = unique("watched")
    r1.set(k, "1")
    with r1.pipeline(transaction=True) as p:
        p.watch(k)
        p.multi()
        p.set(k, "from-tx")
        assert p.execute() == [True]
    assert r2.get(k) == b"from-tx"
    with r1.pipeline(transaction=True) as p:
        p.watch(k)
        r2.set(k, "changed-meanwhile")
        p.multi()
        p.set(k, "lost")
        raises(redis.WatchError, p.execute)
    assert r1.get(k) == b"changed-meanwhile"


@test
def pubsub_across_nodes():
    channel = unique("news")
    sub3 = client(2).pubsub()
    sub3.subscribe(channel)
    assert sub3.get_message(timeout=5)["type"] == "subscribe"
    psub2 = client(1, protocol=3).pubsub()
    psub2.psubscribe(channel.split(":")[0] + ":*")
    assert psub2.get_message(timeout=5)["type"] == "psubscribe"
    pub = client(0)
    assert pub.publish(channel, "hello from node 1") == 0  # no listener on node 1
    m = sub3.get_message(timeout=10)
    assert m["type"] == "message" and m["channel"] == channel.encode(), m
    assert m["data"] == b"hello from node 1"
    pm = psub2.get_message(timeout=10)
    assert pm["type"] == "pmessage" and pm["data"] == b"hello from node 1", pm
    local = client(2).pubsub()
    local.subscribe(channel)
    local.get_message(timeout=5)
    assert client(2).publish(channel, "again") == 2  # both listeners of node 3
    assert sub3.get_message(timeout=10)["data"] == b"again"
    assert local.get_message(timeout=10)["data"] == b"again"
    assert psub2.get_message(timeout=10)["data"] == b"again"
    sub3.unsubscribe(channel)
    assert sub3.get_message(timeout=5)["type"] == "unsubscribe"
    # No channel to leave: Redis answers with no name and the patterns still held.
    psub2.unsubscribe()
    m = psub2.get_message(timeout=5)
    assert m["type"] == "unsubscribe" and m["channel"] is None and m["data"] == 1, m
    for s in (sub3, psub2, local):
        s.close()


@test
def errors_are_the_ones_clients_expect():
    r = client(0)
    raises(redis.ResponseError, lambda: r.execute_command("NOSUCHCOMMAND", "a"), "unknown command")
    raises(redis.ResponseError, lambda: r.execute_command("GET"), "wrong number of arguments")
    raises(redis.ResponseError, lambda: r.execute_command("SET", "k", "v", "BOGUS"), "syntax error")
    host, port = ADDRS[0]
    anon = redis.Redis(host=host, port=int(port))
    # redis-py opens with HELLO, which Redis too refuses with NOAUTH before AUTH.
    raises(redis.AuthenticationError, lambda: anon.get("k"), "authenticated")
    wrong = redis.Redis(host=host, port=int(port), password="not-a-token")
    raises(redis.AuthenticationError, lambda: wrong.ping(), "invalid username-password")


def main():
    passed = failed = 0
    for t in TESTS:
        try:
            t()
            passed += 1
            print(f"ok   {t.__name__}")
        except Exception:
            failed += 1
            print(f"FAIL {t.__name__}")
            traceback.print_exc()
    print(f"redis-py: {passed} passed, {failed} failed")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
