//! ClickHouse's HTTP interface: statements and `INSERT ... FORMAT JSONEachRow`, with the
//! failures a sink must tell apart (retry later, create the schema, or drop the rows).

use super::config::ClickHouseConfig;
use std::time::Duration;

/// Why a request failed, as the sink acts on it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Failure {
    /// No answer (refused, reset, timed out): ClickHouse is away; keep the rows, retry.
    #[error("unreachable: {0}")]
    Unreachable(String),
    /// ClickHouse answered that it is busy (too many parts or queries, memory, timeout):
    /// keep the rows, retry.
    #[error("busy: {0}")]
    Busy(String),
    /// The database or table does not exist: create the schema, retry.
    #[error("missing: {0}")]
    Missing(String),
    /// ClickHouse refused the request itself: retrying would fail again.
    #[error("refused: {0}")]
    Refused(String),
}

/// ClickHouse error codes that say "later" (`Code: N` of its answers).
const BUSY_CODES: [u32; 7] = [
    159, // TIMEOUT_EXCEEDED
    202, // TOO_MANY_SIMULTANEOUS_QUERIES
    209, // SOCKET_TIMEOUT
    210, // NETWORK_ERROR
    241, // MEMORY_LIMIT_EXCEEDED
    252, // TOO_MANY_PARTS
    242, // TABLE_IS_READ_ONLY
];

/// Error codes that say the database or a table is not there.
const MISSING_CODES: [u32; 2] = [
    60, // UNKNOWN_TABLE
    81, // UNKNOWN_DATABASE
];

/// A blocking client of one ClickHouse server.
pub struct Client {
    http: reqwest::Client,
    runtime: tokio::runtime::Runtime,
    url: reqwest::Url,
    database: String,
    user: Option<String>,
    password: Option<String>,
    timeout: Duration,
}

impl Client {
    /// A client for `config` (nothing is sent yet).
    pub fn new(config: &ClickHouseConfig) -> Result<Self, String> {
        let url = reqwest::Url::parse(&config.url).map_err(|e| e.to_string())?;
        let http = reqwest::Client::builder()
            .connect_timeout(config.timeout)
            .build()
            .map_err(|e| e.to_string())?;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| e.to_string())?;
        Ok(Self {
            http,
            runtime,
            url,
            database: config.database.clone(),
            user: config.user.clone(),
            password: config.password.clone(),
            timeout: config.timeout,
        })
    }

    /// Runs one statement; `in_database`: in the configured database (else in the server's
    /// default one). Returns what it printed.
    pub fn execute(&self, sql: &str, in_database: bool) -> Result<String, Failure> {
        let body = bytes::Bytes::copy_from_slice(sql.as_bytes());
        self.post(&[], in_database, body, self.timeout)
    }

    /// Inserts `rows` (JSON objects, one per line) into `table`, within `timeout` at most.
    pub fn insert(
        &self,
        table: &str,
        rows: bytes::Bytes,
        timeout: Duration,
    ) -> Result<(), Failure> {
        let query = format!("INSERT INTO {table} FORMAT JSONEachRow");
        let params = [
            ("query", query.as_str()),
            // Rows from a newer agent carry fields an older table has no column for.
            ("input_format_skip_unknown_fields", "1"),
        ];
        self.post(&params, true, rows, timeout.min(self.timeout))
            .map(drop)
    }

    fn post(
        &self,
        params: &[(&str, &str)],
        in_database: bool,
        body: bytes::Bytes,
        timeout: Duration,
    ) -> Result<String, Failure> {
        let mut url = self.url.clone();
        {
            let mut q = url.query_pairs_mut();
            if in_database {
                q.append_pair("database", &self.database);
            }
            for (k, v) in params {
                q.append_pair(k, v);
            }
        }
        let mut request = self.http.post(url).timeout(timeout).body(body);
        if let Some(user) = &self.user {
            request = request.basic_auth(user, self.password.as_deref());
        }
        self.runtime.block_on(async {
            let response = request
                .send()
                .await
                .map_err(|e| Failure::Unreachable(crate::errors::chain(&e)))?;
            let status = response.status();
            let text = read_bounded(response).await?;
            if status.is_success() {
                Ok(text)
            } else {
                Err(classify(status.as_u16(), text))
            }
        })
    }
}

/// Most bytes of an answer read: the statements the sink runs answer a few partitions or an
/// error line; a server (or something in its place) sending more does not grow the agent.
const MAX_ANSWER: usize = 1 << 20;

/// The answer's body, at most [`MAX_ANSWER`] bytes of it (lossy UTF-8).
async fn read_bounded(mut response: reqwest::Response) -> Result<String, Failure> {
    let mut body = Vec::new();
    while let Some(chunk) = response
        .chunk()
        .await
        .map_err(|e| Failure::Unreachable(crate::errors::chain(&e)))?
    {
        let room = MAX_ANSWER - body.len();
        body.extend_from_slice(&chunk[..chunk.len().min(room)]);
        if body.len() == MAX_ANSWER {
            break;
        }
    }
    Ok(String::from_utf8_lossy(&body).into_owned())
}

/// The failure an error answer stands for.
pub fn classify(status: u16, text: String) -> Failure {
    let text = text.trim().chars().take(300).collect::<String>();
    let code = text
        .strip_prefix("Code: ")
        .and_then(|rest| rest.split(|c: char| !c.is_ascii_digit()).next())
        .and_then(|n| n.parse::<u32>().ok());
    match code {
        Some(c) if MISSING_CODES.contains(&c) => Failure::Missing(text),
        Some(c) if BUSY_CODES.contains(&c) => Failure::Busy(text),
        _ if status == 503 || status == 429 => Failure::Busy(text),
        _ => Failure::Refused(text),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_endless_answer_is_read_only_up_to_its_bound() {
        use std::io::{Read, Write};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let server = std::thread::spawn(move || {
            let (mut conn, _) = listener.accept().unwrap();
            let mut request = [0u8; 4096];
            let _ = conn.read(&mut request);
            let _ = conn.write_all(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n");
            // 8 MiB of answer, far past the bound; the client stops reading.
            let block = vec![b'x'; 64 * 1024];
            for _ in 0..128 {
                if conn.write_all(&block).is_err() {
                    break;
                }
            }
        });
        let client = Client::new(&ClickHouseConfig {
            url,
            ..ClickHouseConfig::default()
        })
        .unwrap();
        let answer = client.execute("SELECT 1", false).unwrap();
        assert_eq!(answer.len(), MAX_ANSWER);
        drop(client);
        server.join().unwrap();
    }

    #[test]
    fn error_answers_are_told_apart_by_their_code() {
        let missing = "Code: 60, e.displayText() = DB::Exception: Table fnm.hosts doesn't exist.";
        assert!(matches!(classify(404, missing.into()), Failure::Missing(_)));
        let busy = "Code: 252, e.displayText() = DB::Exception: Too many parts (300).";
        assert!(matches!(classify(500, busy.into()), Failure::Busy(_)));
        let bad = "Code: 27, e.displayText() = DB::Exception: Cannot parse input";
        assert!(matches!(classify(500, bad.into()), Failure::Refused(_)));
        assert!(matches!(classify(503, "".into()), Failure::Busy(_)));
        assert!(matches!(
            classify(500, "garbage".into()),
            Failure::Refused(_)
        ));
    }
}
