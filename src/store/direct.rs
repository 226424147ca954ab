//! Direct SQLite calls (through libsqlite3-sys, the library sqlx itself links) for the raw
//! rows: a sweep's rows written, a compaction's read back, and a tenant's read for an answer
//! (issue 15).
//!
//! sqlx copies every bound value into an owned argument and every fetched value into an owned
//! `SqliteValue`, and sends rows between its worker thread and the task. For the raw rows (some
//! 40 values each, one row per tenant and sweep) that copying was most of the cost: a profile
//! of a compaction put 60% of its CPU in turning sqlx's rows into ours (`try_get`, then the
//! drop of sqlx's rows), and the sweep's write spent 40% of its time binding and clearing
//! 47,000 values. Here a statement is prepared once per call, each row is bound and stepped in
//! place, and each column read straight from SQLite's result, inside the sqlx connection's own
//! transaction (the handle is locked out of sqlx's worker while we use it). Everything else
//! stays on sqlx.
#![allow(unsafe_code)]

use super::{Result, StoreError};
use libsqlite3_sys as ffi;
use sqlx::SqliteConnection;
use sqlx::sqlite::LockedSqliteHandle;
use std::borrow::Cow;
use std::ffi::{CStr, c_int};
use std::marker::PhantomData;
use std::ptr::NonNull;

/// An error SQLite answered on a direct call, shaped as sqlx's so that the store classifies it
/// as any other (a full disk included: `is_full` reads the extended code).
#[derive(Debug)]
struct DirectError {
    code: c_int,
    message: String,
}

impl std::fmt::Display for DirectError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "(code: {}) {}", self.code, self.message)
    }
}

impl std::error::Error for DirectError {}

impl sqlx::error::DatabaseError for DirectError {
    fn message(&self) -> &str {
        &self.message
    }
    fn code(&self) -> Option<Cow<'_, str>> {
        Some(Cow::Owned(self.code.to_string()))
    }
    fn as_error(&self) -> &(dyn std::error::Error + Send + Sync + 'static) {
        self
    }
    fn as_error_mut(&mut self) -> &mut (dyn std::error::Error + Send + Sync + 'static) {
        self
    }
    fn into_error(self: Box<Self>) -> Box<dyn std::error::Error + Send + Sync + 'static> {
        self
    }
    fn kind(&self) -> sqlx::error::ErrorKind {
        sqlx::error::ErrorKind::Other
    }
}

/// Runs `f`, which calls SQLite directly, telling a multi-threaded runtime that this worker
/// blocks (so its other tasks move to another worker); on a current-thread runtime (tests)
/// it just runs.
pub(super) fn blocking<T>(f: impl FnOnce() -> T) -> T {
    use tokio::runtime::{Handle, RuntimeFlavor};
    match Handle::try_current().map(|h| h.runtime_flavor()) {
        Ok(RuntimeFlavor::MultiThread) => tokio::task::block_in_place(f),
        _ => f(),
    }
}

/// A sqlx connection's SQLite handle, locked out of sqlx's worker for direct calls.
pub(super) struct Direct<'c> {
    /// Held for `db`'s sake: sqlx's worker cannot use the connection while it is.
    _handle: LockedSqliteHandle<'c>,
    db: *mut ffi::sqlite3,
}

impl<'c> Direct<'c> {
    pub(super) async fn lock(conn: &'c mut SqliteConnection, op: &'static str) -> Result<Self> {
        let handle = conn
            .lock_handle()
            .await
            .map_err(|source| StoreError::Query { op, source })?;
        let mut handle = handle;
        let db = handle.as_raw_handle().as_ptr();
        Ok(Direct {
            _handle: handle,
            db,
        })
    }

    /// Prepares `sql` (one statement, the store's own constant text). The statement is
    /// finalized when dropped; it cannot outlive the lock. Several may be open at once.
    pub(super) fn prepare(&self, sql: &str, op: &'static str) -> Result<Stmt<'_>> {
        let db = self.db;
        let mut st = std::ptr::null_mut();
        let len = c_int::try_from(sql.len()).map_err(|_| too_long(op))?;
        // SAFETY: `db` is the open connection this lock holds; `sql` is valid for `len` bytes;
        // `st` is written by SQLite (null on error).
        let rc = unsafe {
            ffi::sqlite3_prepare_v3(
                db,
                sql.as_ptr().cast(),
                len,
                // Not SQLITE_PREPARE_PERSISTENT: the statement lives for one call.
                0,
                &mut st,
                std::ptr::null_mut(),
            )
        };
        if rc != ffi::SQLITE_OK {
            return Err(error(db, op));
        }
        let st = NonNull::new(st).ok_or_else(|| too_long(op))?;
        Ok(Stmt {
            db,
            st,
            op,
            _lock: PhantomData,
        })
    }
}

/// Runs the SELECT `sql` on `conn` directly: `bind` binds its parameters, `row` makes a value
/// of each row it answers. The one loop of every direct read.
pub(super) async fn query_rows<T>(
    conn: &mut SqliteConnection,
    sql: &str,
    op: &'static str,
    bind: impl FnOnce(&mut Stmt<'_>) -> Result<()>,
    mut row: impl FnMut(&Stmt<'_>) -> T,
) -> Result<Vec<T>> {
    let d = Direct::lock(conn, op).await?;
    blocking(|| {
        let mut st = d.prepare(sql, op)?;
        bind(&mut st)?;
        let mut rows = Vec::new();
        while st.step()? {
            rows.push(row(&st));
        }
        Ok(rows)
    })
}

fn too_long(op: &'static str) -> StoreError {
    StoreError::Query {
        op,
        source: sqlx::Error::Protocol("a direct statement's text is empty or too long".into()),
    }
}

/// The error SQLite holds for `db` now.
fn error(db: *mut ffi::sqlite3, op: &'static str) -> StoreError {
    // SAFETY: `db` is an open connection; `sqlite3_errmsg` returns a NUL-terminated string
    // owned by SQLite, valid until the next call on `db`, copied at once.
    let (code, message) = unsafe {
        (
            ffi::sqlite3_extended_errcode(db),
            CStr::from_ptr(ffi::sqlite3_errmsg(db))
                .to_string_lossy()
                .into_owned(),
        )
    };
    StoreError::Query {
        op,
        source: sqlx::Error::Database(Box::new(DirectError { code, message })),
    }
}

/// A prepared statement of a `Direct` connection. Parameters and columns count from 1 and 0,
/// as in SQLite.
pub(super) struct Stmt<'d> {
    db: *mut ffi::sqlite3,
    st: NonNull<ffi::sqlite3_stmt>,
    op: &'static str,
    _lock: PhantomData<&'d mut ()>,
}

impl Drop for Stmt<'_> {
    fn drop(&mut self) {
        // SAFETY: `st` was prepared on `db` and is finalized once, here.
        unsafe {
            ffi::sqlite3_finalize(self.st.as_ptr());
        }
    }
}

/// A value bound to a statement's parameter.
pub(super) trait Param {
    /// # Safety
    /// `st` is a live prepared statement and `i` one of its parameters' index.
    unsafe fn bind_to(&self, st: *mut ffi::sqlite3_stmt, i: c_int) -> c_int;
}

impl Param for i64 {
    unsafe fn bind_to(&self, st: *mut ffi::sqlite3_stmt, i: c_int) -> c_int {
        // SAFETY: the caller's contract.
        unsafe { ffi::sqlite3_bind_int64(st, i, *self) }
    }
}

impl Param for f64 {
    unsafe fn bind_to(&self, st: *mut ffi::sqlite3_stmt, i: c_int) -> c_int {
        // SAFETY: the caller's contract.
        unsafe { ffi::sqlite3_bind_double(st, i, *self) }
    }
}

impl Param for bool {
    unsafe fn bind_to(&self, st: *mut ffi::sqlite3_stmt, i: c_int) -> c_int {
        // SAFETY: the caller's contract.
        unsafe { ffi::sqlite3_bind_int64(st, i, i64::from(*self)) }
    }
}

impl Param for &str {
    unsafe fn bind_to(&self, st: *mut ffi::sqlite3_stmt, i: c_int) -> c_int {
        // SQLITE_TRANSIENT: SQLite copies the text before this returns.
        let Ok(len) = c_int::try_from(self.len()) else {
            return ffi::SQLITE_TOOBIG;
        };
        // SAFETY: the caller's contract; the text is valid for `len` bytes during the call.
        unsafe { ffi::sqlite3_bind_text(st, i, self.as_ptr().cast(), len, ffi::SQLITE_TRANSIENT()) }
    }
}

impl Param for &[u8] {
    unsafe fn bind_to(&self, st: *mut ffi::sqlite3_stmt, i: c_int) -> c_int {
        // SQLITE_TRANSIENT: SQLite copies the bytes before this returns.
        let Ok(len) = c_int::try_from(self.len()) else {
            return ffi::SQLITE_TOOBIG;
        };
        // SAFETY: the caller's contract; the bytes are valid for `len` during the call.
        unsafe { ffi::sqlite3_bind_blob(st, i, self.as_ptr().cast(), len, ffi::SQLITE_TRANSIENT()) }
    }
}

impl<T: Param> Param for Option<T> {
    unsafe fn bind_to(&self, st: *mut ffi::sqlite3_stmt, i: c_int) -> c_int {
        match self {
            // SAFETY: the caller's contract.
            Some(v) => unsafe { v.bind_to(st, i) },
            // SAFETY: the caller's contract.
            None => unsafe { ffi::sqlite3_bind_null(st, i) },
        }
    }
}

impl Stmt<'_> {
    /// Binds parameter `i` (from 1).
    pub(super) fn bind(&mut self, i: usize, v: impl Param) -> Result<()> {
        let i = c_int::try_from(i).map_err(|_| too_long(self.op))?;
        // SAFETY: `st` is live; SQLite checks `i` and answers SQLITE_RANGE for a bad one.
        let rc = unsafe { v.bind_to(self.st.as_ptr(), i) };
        if rc == ffi::SQLITE_OK {
            Ok(())
        } else {
            Err(error(self.db, self.op))
        }
    }

    /// Steps once: true when a row is ready to read, false when the statement is done.
    pub(super) fn step(&mut self) -> Result<bool> {
        // SAFETY: `st` is live and used by this thread only (the connection is locked).
        match unsafe { ffi::sqlite3_step(self.st.as_ptr()) } {
            ffi::SQLITE_ROW => Ok(true),
            ffi::SQLITE_DONE => Ok(false),
            _ => Err(error(self.db, self.op)),
        }
    }

    /// Makes the statement ready to run again (its bindings stay until bound again).
    pub(super) fn reset(&mut self) {
        // SAFETY: `st` is live. A failed step reported its error already; reset repeats it.
        unsafe {
            ffi::sqlite3_reset(self.st.as_ptr());
        }
    }

    /// Runs the statement once with the parameters bound (an INSERT or DELETE), then resets it.
    pub(super) fn execute(&mut self) -> Result<()> {
        let r = self.step().map(|_| ());
        self.reset();
        r
    }

    fn null(&self, c: usize) -> bool {
        // SAFETY: `st` has a row; SQLite answers NULL for a column out of range.
        unsafe { ffi::sqlite3_column_type(self.st.as_ptr(), c as c_int) == ffi::SQLITE_NULL }
    }

    /// Column `c` (from 0) of the current row as an integer, `None` for NULL.
    pub(super) fn int(&self, c: usize) -> Option<i64> {
        // SAFETY: as `null`.
        (!self.null(c)).then(|| unsafe { ffi::sqlite3_column_int64(self.st.as_ptr(), c as c_int) })
    }

    /// Column `c` of the current row as a float (an integer converted as SQLite converts),
    /// `None` for NULL.
    pub(super) fn real(&self, c: usize) -> Option<f64> {
        // SAFETY: as `null`.
        (!self.null(c)).then(|| unsafe { ffi::sqlite3_column_double(self.st.as_ptr(), c as c_int) })
    }

    /// Column `c` of the current row as bytes (empty for NULL), borrowed until the next step.
    pub(super) fn blob(&self, c: usize) -> &[u8] {
        // SAFETY: `st` has a row. `sqlite3_column_blob` returns the value's bytes (null for
        // NULL or empty), valid until the next step, reset or conversion of the column: the
        // borrow of `self` ends before `step` (which takes `&mut self`) can run. Its length is
        // `sqlite3_column_bytes`, asked after it as SQLite's documentation says.
        unsafe {
            let p = ffi::sqlite3_column_blob(self.st.as_ptr(), c as c_int);
            if p.is_null() {
                return &[];
            }
            let n = ffi::sqlite3_column_bytes(self.st.as_ptr(), c as c_int);
            std::slice::from_raw_parts(p.cast(), usize::try_from(n).unwrap_or(0))
        }
    }

    /// Column `c` of the current row as text (empty for NULL): its bytes (`blob`, which
    /// SQLite answers for a TEXT value as its UTF-8), copied at once.
    pub(super) fn text(&self, c: usize) -> String {
        String::from_utf8_lossy(self.blob(c)).into_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sqlx::Connection;

    async fn conn() -> (tempfile::TempDir, SqliteConnection) {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}?mode=rwc", dir.path().join("d.db").display());
        let c = SqliteConnection::connect(&url).await.unwrap();
        (dir, c)
    }

    /// Values bound directly read back as sqlx reads them, and sqlx reads what was written
    /// directly inside its own transaction, after the commit.
    #[tokio::test]
    async fn direct_rows_round_trip_through_sqlx_and_back() {
        let (_d, mut c) = conn().await;
        sqlx::query("CREATE TABLE t (s TEXT, i INTEGER, r REAL, b INTEGER)")
            .execute(&mut c)
            .await
            .unwrap();
        let mut tx = c.begin().await.unwrap();
        {
            let d = Direct::lock(&mut tx, "test").await.unwrap();
            let mut st = d
                .prepare("INSERT INTO t (s, i, r, b) VALUES (?1, ?2, ?3, ?4)", "test")
                .unwrap();
            for (s, i, r, b) in [
                ("a", Some(i64::MAX), Some(0.1 + 0.2), true),
                ("b\u{e9}", None, None, false),
                ("", Some(-1), Some(f64::MIN_POSITIVE), true),
            ] {
                st.bind(1, s).unwrap();
                st.bind(2, i).unwrap();
                st.bind(3, r).unwrap();
                st.bind(4, b).unwrap();
                st.execute().unwrap();
            }
        }
        tx.commit().await.unwrap();
        let rows: Vec<(String, Option<i64>, Option<f64>, bool)> =
            sqlx::query_as("SELECT s, i, r, b FROM t ORDER BY rowid")
                .fetch_all(&mut c)
                .await
                .unwrap();
        assert_eq!(
            rows,
            vec![
                ("a".into(), Some(i64::MAX), Some(0.1 + 0.2), true),
                ("b\u{e9}".into(), None, None, false),
                ("".into(), Some(-1), Some(f64::MIN_POSITIVE), true),
            ]
        );
        let d = Direct::lock(&mut c, "test").await.unwrap();
        let mut st = d
            .prepare(
                "SELECT s, i, r, b FROM t WHERE i IS NOT ?1 ORDER BY rowid",
                "test",
            )
            .unwrap();
        st.bind(1, -1_i64).unwrap();
        let mut back = Vec::new();
        while st.step().unwrap() {
            back.push((st.text(0), st.int(1), st.real(2), st.int(3)));
        }
        assert_eq!(
            back,
            vec![
                ("a".to_string(), Some(i64::MAX), Some(0.1 + 0.2), Some(1)),
                ("b\u{e9}".to_string(), None, None, Some(0)),
            ]
        );
    }

    /// SQLite's own error comes back with its extended code and message, and the connection
    /// stays usable for sqlx.
    #[tokio::test]
    async fn a_direct_error_names_sqlites_code_and_message() {
        let (_d, mut c) = conn().await;
        sqlx::query("CREATE TABLE t (k INTEGER PRIMARY KEY)")
            .execute(&mut c)
            .await
            .unwrap();
        {
            let d = Direct::lock(&mut c, "test").await.unwrap();
            let e = d.prepare("SELECT nope FROM t", "read t").err().unwrap();
            assert!(e.to_string().contains("read t"), "{e}");
            let mut st = d
                .prepare("INSERT INTO t (k) VALUES (?1)", "write t")
                .unwrap();
            st.bind(1, 7_i64).unwrap();
            st.execute().unwrap();
            st.bind(1, 7_i64).unwrap();
            let StoreError::Query { source, .. } = st.execute().err().unwrap() else {
                panic!("not a query error");
            };
            let sqlx::Error::Database(db) = source else {
                panic!("not a database error: {source}");
            };
            // SQLITE_CONSTRAINT_PRIMARYKEY
            assert_eq!(db.code().as_deref(), Some("1555"), "{}", db.message());
            assert!(db.message().contains("UNIQUE"), "{}", db.message());
        }
        let n: i64 = sqlx::query_scalar("SELECT count(*) FROM t")
            .fetch_one(&mut c)
            .await
            .unwrap();
        assert_eq!(n, 1);
    }
}
