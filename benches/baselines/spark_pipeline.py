"""The eddy pipeline's core in Spark Structured Streaming, as a baseline.

parse (JSON lines, schema, malformed lines dropped) -> validate (range check,
junk values nulled) -> calibrate (gain/offset per device and channel, joined
from calibration.csv) and device context (devices.csv) -> two queries:
  * the Parquet backup of every calibrated reading (append, partitioned by date);
  * count/mean/min/max per (device, 1-hour window) of every channel, with a
    10-minute watermark (the same lateness as eddy), written as Parquet.

Run by benches/e2e.sh; alone:
  .venv/bin/python spark_pipeline.py DATASET OUT [--files-per-trigger N] [--chunk-lines N]

--chunk-lines 0 (default) reads readings.jsonl as one file, one micro-batch:
Spark's fastest configuration. --chunk-lines N splits the input into files of
N lines (cached beside the dataset) and takes one file per micro-batch: a
realistic streaming configuration.

Simplifications, each of which favours Spark: the latest calibration version
applies to every reading (eddy looks calibration up as of each reading's
time, with updates.jsonl applied), no statistics, alerts or JSON-lines outputs,
no raw archive.

Prints one JSON line: {"config", "readings", "processing_s", "readings_per_s", "batches", ...}.
"""
import argparse
import json
import os
import shutil
import sys
import time


def split_input(dataset, stage, chunk_lines):
    src = os.path.join(dataset, "readings.jsonl")
    dst = os.path.join(stage, f"chunks-{chunk_lines}")
    done = os.path.join(dst, "_done")
    if os.path.exists(done):
        return dst
    shutil.rmtree(dst, ignore_errors=True)
    os.makedirs(dst)
    n, part, out = 0, 0, None
    with open(src, "rb") as f:
        for line in f:
            if out is None or n == chunk_lines:
                if out:
                    out.close()
                out = open(os.path.join(dst, f"part-{part:06d}.jsonl"), "wb")
                part += 1
                n = 0
            out.write(line)
            n += 1
    if out:
        out.close()
    open(done, "w").close()
    return dst


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("dataset")
    ap.add_argument("out")
    ap.add_argument("--chunk-lines", type=int, default=0)
    ap.add_argument("--files-per-trigger", type=int, default=1)
    ap.add_argument("--shuffle-partitions", type=int, default=2)
    ap.add_argument("--stage", help="where to keep the split input (default: OUT.input)")
    args = ap.parse_args()
    stage = args.stage or (os.path.abspath(args.out).rstrip("/") + ".input")

    if args.chunk_lines > 0:
        src_dir = split_input(args.dataset, stage, args.chunk_lines)
        config = f"micro-batches of {args.chunk_lines} lines"
    else:
        src_dir = os.path.join(stage, "one")
        if not os.path.exists(src_dir):
            os.makedirs(src_dir)
            os.symlink(os.path.abspath(os.path.join(args.dataset, "readings.jsonl")),
                       os.path.join(src_dir, "readings.jsonl"))
        config = "one micro-batch"

    from pyspark.sql import SparkSession, functions as F, types as T

    t_start = time.time()
    spark = (SparkSession.builder.master("local[2]").appName("eddy-baseline")
             .config("spark.sql.shuffle.partitions", str(args.shuffle_partitions))
             .config("spark.ui.enabled", "false")
             .config("spark.ui.showConsoleProgress", "false")
             .config("spark.driver.memory", "4g")
             .config("spark.sql.streaming.schemaInference", "false")
             .getOrCreate())
    spark.sparkContext.setLogLevel("ERROR")
    t_session = time.time()

    channels = ["pm25", "co2", "voc", "temp", "hum"]
    ranges = {"pm25": (0, 1000), "co2": (0, 10000), "voc": (0, 100000), "temp": (-40, 85), "hum": (0, 100)}
    schema = T.StructType([T.StructField("device_id", T.StringType()), T.StructField("ts", T.LongType())] +
                          [T.StructField(c, T.DoubleType()) for c in channels])

    devices = spark.read.option("header", True).csv(os.path.join(args.dataset, "devices.csv"))
    cal = spark.read.option("header", True).csv(os.path.join(args.dataset, "calibration.csv"))
    cal = cal.withColumn("gain", F.col("gain").cast("double")).withColumn("offset", F.col("offset").cast("double"))
    # The latest version per (device, channel), pivoted to one row per device.
    from pyspark.sql.window import Window
    w = Window.partitionBy("device_id", "channel").orderBy(F.col("valid_from").desc_nulls_last())
    cal = cal.withColumn("rn", F.row_number().over(w)).filter("rn = 1")
    cal = cal.groupBy("device_id").pivot("channel", channels).agg(F.first("gain").alias("g"), F.first("offset").alias("o"))
    ref = F.broadcast(devices.join(cal, "device_id", "left").cache())
    ref.count()

    raw = (spark.readStream.schema(schema).option("maxFilesPerTrigger", args.files_per_trigger)
           .option("mode", "PERMISSIVE").json(src_dir))
    valid = raw.filter(F.col("device_id").isNotNull() & F.col("ts").isNotNull())
    for c in channels:
        lo, hi = ranges[c]
        valid = valid.withColumn(c, F.when((F.col(c) >= lo) & (F.col(c) <= hi), F.col(c)))
    enriched = valid.join(ref, "device_id", "left")
    for c in channels:
        g, o = f"{c}_g", f"{c}_o"
        enriched = enriched.withColumn(c, F.when(F.col(g).isNotNull(), F.col(c) * F.col(g) + F.col(o)).otherwise(F.col(c)))
    enriched = (enriched.drop(*[f"{c}_{s}" for c in channels for s in "go"])
                .withColumn("event_time", (F.col("ts") / 1000).cast("timestamp"))
                .withColumn("date", F.to_date("event_time")))

    out = os.path.abspath(args.out)
    shutil.rmtree(out, ignore_errors=True)
    backup = (enriched.writeStream.format("parquet").partitionBy("date")
              .option("path", os.path.join(out, "backup"))
              .option("checkpointLocation", os.path.join(out, "_ck_backup"))
              .trigger(availableNow=True).start())
    aggs = []
    for c in channels:
        aggs += [F.count(c).alias(f"{c}_count"), F.avg(c).alias(f"{c}_mean"),
                 F.min(c).alias(f"{c}_min"), F.max(c).alias(f"{c}_max")]
    windows = (enriched.withWatermark("event_time", "10 minutes")
               .groupBy(F.window("event_time", "1 hour"), "device_id").agg(*aggs)
               .writeStream.format("parquet").outputMode("append")
               .option("path", os.path.join(out, "windows"))
               .option("checkpointLocation", os.path.join(out, "_ck_windows"))
               .trigger(availableNow=True).start())
    t_run = time.time()
    backup.awaitTermination()
    windows.awaitTermination()
    t_end = time.time()

    t_count = time.time()
    readings = spark.read.parquet(os.path.join(out, "backup")).count()
    window_rows = spark.read.parquet(os.path.join(out, "windows")).count()
    batches = len([f for f in os.listdir(os.path.join(out, "_ck_backup", "commits")) if f.isdigit()])
    res = {
        "system": "spark",
        "config": config,
        "pyspark": __import__("pyspark").__version__,
        "readings": readings,
        "window_rows": window_rows,
        "batches": batches,
        "session_start_s": round(t_session - t_start, 3),
        "processing_s": round(t_end - t_run, 3),
        "readings_per_s": round(readings / (t_end - t_run), 1),
    }
    spark.stop()
    print(json.dumps(res))


if __name__ == "__main__":
    sys.exit(main())
