//! Runs an axum router on a caller-supplied listener and stops it on request; shared by the
//! dev servers so they all stop the same way.

use std::io;
use std::net::SocketAddr;
use std::sync::Mutex;

use axum::Router;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// A server task and the means to stop it. Dropping the last handle stops it too, so a
/// test that forgets `stop()` does not leave a listener behind for the next test.
pub(crate) struct Running {
    addr: SocketAddr,
    shutdown: Mutex<Option<oneshot::Sender<()>>>,
    task: Mutex<Option<JoinHandle<()>>>,
}

impl Running {
    /// Spawns the server on the current tokio runtime.
    pub(crate) fn spawn(listener: TcpListener, router: Router) -> io::Result<Running> {
        let addr = listener.local_addr()?;
        let (shutdown, signal) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            // A dropped sender also means shutdown, hence ignoring the receive result.
            let serve = axum::serve(listener, router).with_graceful_shutdown(async move {
                let _ = signal.await;
            });
            if let Err(e) = serve.await {
                eprintln!("dev server on {addr} failed: {e}");
            }
        });
        Ok(Running {
            addr,
            shutdown: Mutex::new(Some(shutdown)),
            task: Mutex::new(Some(task)),
        })
    }

    pub(crate) fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops accepting (the listener closes, so new connections are refused), closes idle
    /// keep-alive connections and waits for in-flight responses to finish. Idle pooled
    /// connections must close too, or a client would keep talking to a stopped server.
    pub(crate) async fn stop(&self) {
        if let Some(shutdown) = lock(&self.shutdown).take() {
            let _ = shutdown.send(());
        }
        let task = lock(&self.task).take();
        if let Some(task) = task {
            let _ = task.await;
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(shutdown) = lock(&self.shutdown).take() {
            let _ = shutdown.send(());
        }
    }
}

/// Locks a mutex, ignoring poisoning: the guarded values stay valid if a test panicked.
pub(crate) fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}
