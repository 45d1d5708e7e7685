-- fnm's history tables in ClickHouse (docs/clickhouse/README.md).
--
-- The agent creates them itself when [export.clickhouse] create_schema = true (the default),
-- in the database of [export.clickhouse] database; by hand:
--   clickhouse-client --query "CREATE DATABASE IF NOT EXISTS fnm"
--   clickhouse-client --database fnm --multiquery < schema.sql
-- Written for ClickHouse 18.16 (Debian 12's package) and later: no TTL clause (18.16 has
-- none; the agent drops whole partitions older than retention_days instead), no
-- LowCardinality (experimental there). Columns are only ever added; rows carry more JSON
-- fields than a table of an older schema has, and the agent inserts with
-- input_format_skip_unknown_fields = 1, so an older table keeps working.
-- Statements are separated by a semicolon at the end of a line.

-- Every host's counters of each poll slot, one row per host, direction and agent.
CREATE TABLE IF NOT EXISTS hosts
(
    end_unix_ms UInt64,
    time DateTime MATERIALIZED toDateTime(intDiv(end_unix_ms, 1000)),
    date Date MATERIALIZED toDate(toDateTime(intDiv(end_unix_ms, 1000))),
    agent String,
    host String,
    direction Enum8('incoming' = 1, 'outgoing' = 2),
    duration_ms UInt32,
    packets UInt64,
    bytes UInt64,
    flows UInt64,
    tcp_packets UInt64,
    tcp_bytes UInt64,
    udp_packets UInt64,
    udp_bytes UInt64,
    icmp_packets UInt64,
    icmp_bytes UInt64,
    tcp_syn_packets UInt64,
    fragments UInt64
)
ENGINE = MergeTree
PARTITION BY date
ORDER BY (host, direction, end_unix_ms);

-- The same counters summed per minute, kept for months (rollup_retention_days).
CREATE TABLE IF NOT EXISTS hosts_1m
(
    date Date,
    minute DateTime,
    agent String,
    host String,
    direction Enum8('incoming' = 1, 'outgoing' = 2),
    packets UInt64,
    bytes UInt64,
    flows UInt64,
    tcp_syn_packets UInt64,
    fragments UInt64
)
ENGINE = SummingMergeTree
PARTITION BY toYYYYMM(date)
ORDER BY (host, direction, minute, agent);

CREATE MATERIALIZED VIEW IF NOT EXISTS hosts_1m_mv TO hosts_1m AS
SELECT date, toStartOfMinute(time) AS minute, agent, host, direction,
       packets, bytes, flows, tcp_syn_packets, fragments
FROM hosts;

-- Attack events: started (with the threshold crossed), updated (current and peak rates),
-- stopped. `record` holds the whole event as JSON.
CREATE TABLE IF NOT EXISTS attacks
(
    unix_ms UInt64,
    time DateTime MATERIALIZED toDateTime(intDiv(unix_ms, 1000)),
    date Date MATERIALIZED toDate(toDateTime(intDiv(unix_ms, 1000))),
    agent String,
    event Enum8('started' = 1, 'updated' = 2, 'stopped' = 3),
    attack_id String,
    host String,
    direction Enum8('incoming' = 1, 'outgoing' = 2),
    hostgroup String,
    attack_type String,
    rate String,
    value Float64,
    threshold Float64,
    protocol String,
    pps Float64,
    bytes_per_second Float64,
    peak_pps Float64,
    peak_bytes_per_second Float64,
    record String
)
ENGINE = MergeTree
PARTITION BY toYYYYMM(date)
ORDER BY (host, unix_ms);

-- Mitigation events: applied and lifted. `record` holds the mitigation as JSON.
CREATE TABLE IF NOT EXISTS mitigations
(
    unix_ms UInt64,
    time DateTime MATERIALIZED toDateTime(intDiv(unix_ms, 1000)),
    date Date MATERIALIZED toDate(toDateTime(intDiv(unix_ms, 1000))),
    agent String,
    event Enum8('applied' = 1, 'lifted' = 2),
    mitigation_id String,
    host String,
    prefix String,
    record String
)
ENGINE = MergeTree
PARTITION BY toYYYYMM(date)
ORDER BY (host, unix_ms);

-- One in [export] flow_sample_rate flow records as decoded (sFlow samples, NetFlow/IPFIX
-- records, captured packets). packets and bytes are already scaled by the exporter's
-- sampling; multiply by sample_rate for the agent's total.
CREATE TABLE IF NOT EXISTS flows
(
    end_unix_ms UInt64,
    time DateTime MATERIALIZED toDateTime(intDiv(end_unix_ms, 1000)),
    date Date MATERIALIZED toDate(toDateTime(intDiv(end_unix_ms, 1000))),
    agent String,
    source String,
    src String,
    dst String,
    protocol UInt8,
    src_port UInt16,
    dst_port UInt16,
    tcp_flags UInt8,
    packets UInt64,
    bytes UInt64,
    sample_rate UInt32
)
ENGINE = MergeTree
PARTITION BY date
ORDER BY (dst, end_unix_ms);
