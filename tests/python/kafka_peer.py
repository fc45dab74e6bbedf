"""A Kafka peer eddy did not write (confluent-kafka, on librdkafka).

    python kafka_peer.py produce BROKERS PREFIX   # raw readings into PREFIX.raw, then an end marker
    python kafka_peer.py consume BROKERS PREFIX   # reads PREFIX.readings and PREFIX.deadletter

`consume` prints one JSON object: the number of readings and dead letters,
the devices seen, and whether every reading was keyed by its device_id.
"""
import json
import sys
import time

from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

T0 = 1767225600000


def produce(brokers, prefix):
    topic = prefix + ".raw"
    admin = AdminClient({"bootstrap.servers": brokers})
    for f in admin.create_topics([NewTopic(topic, num_partitions=1, replication_factor=1)]).values():
        try:
            f.result()
        except Exception as e:  # already created by the ingest job
            if "already exists" not in str(e).lower() and "TOPIC_ALREADY_EXISTS" not in str(e):
                raise
    p = Producer({"bootstrap.servers": brokers, "enable.idempotence": True, "acks": "all"})
    lines = [
        {"device_id": "py-1", "ts": T0, "pm25": 12.5, "co2": 420},
        {"device_id": "py-2", "ts": T0 + 60000, "pm25": 40.0},
        {"device_id": "py-1", "ts": T0 + 120000, "pm25": 13.0},
    ]
    for line in lines:
        p.produce(topic, key=line["device_id"].encode(), value=json.dumps(line).encode())
    p.produce(topic, value=b"{not json")
    p.flush(30)
    # End of stream: a record without key or value, header eddy.wm = end.
    p.produce(topic, partition=0, value=None, headers=[("eddy.wm", b"end")])
    assert p.flush(30) == 0


def read_all(brokers, topic):
    c = Consumer({"bootstrap.servers": brokers, "group.id": "peer-" + topic, "enable.auto.commit": False,
                  "auto.offset.reset": "earliest"})
    md = c.list_topics(topic, timeout=30)
    parts = list(md.topics[topic].partitions)
    ends = {}
    for pt in parts:
        lo, hi = c.get_watermark_offsets(TopicPartition(topic, pt), timeout=30)
        if hi > lo:
            ends[pt] = hi
    c.assign([TopicPartition(topic, pt, 0) for pt in ends])
    out = []
    deadline = time.time() + 60
    while ends and time.time() < deadline:
        m = c.poll(0.5)
        if m is None or m.error():
            continue
        if m.offset() + 1 >= ends.get(m.partition(), 0):
            ends.pop(m.partition(), None)
        headers = dict(m.headers() or [])
        if "eddy.wm" in headers:
            continue
        out.append(m)
    # Tansu 0.6 reports a partition's end as its last batch's first offset
    # plus one: the rest of that batch is already here.
    drain_until = time.time() + 1
    while time.time() < drain_until:
        m = c.poll(0.5)
        if m is None:
            break
        if not m.error() and "eddy.wm" not in dict(m.headers() or []):
            out.append(m)
    c.close()
    assert not ends, "did not reach the end of " + topic
    return out


def consume(brokers, prefix):
    readings = read_all(brokers, prefix + ".readings")
    dead = read_all(brokers, prefix + ".deadletter")
    devices = sorted({json.loads(m.value())["device"] for m in readings})
    keyed = all(m.key() is not None and m.key().decode() == json.loads(m.value())["device"] for m in readings)
    print(json.dumps({"readings": len(readings), "deadletter": len(dead), "devices": devices,
                      "keyed_by_device": keyed}))


if __name__ == "__main__":
    cmd, brokers, prefix = sys.argv[1:4]
    {"produce": produce, "consume": consume}[cmd](brokers, prefix)
