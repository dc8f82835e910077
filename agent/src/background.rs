//! An agent job (observing, or observing and reporting) on a thread of its own, for tests
//! and benchmarks that drive traffic from the calling thread. The job is stopped, and its
//! programs detached, when the guard is stopped or dropped — also when a test fails.
use std::future::Future;
use std::pin::Pin;

/// Resolves when the job is asked to stop.
pub type StopSignal = Pin<Box<dyn Future<Output = ()> + Send>>;
/// The job calls it once its programs are attached.
pub type ReadySignal = Box<dyn FnOnce() + Send>;

pub struct Background<T> {
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<T>>,
}

impl<T: Send + 'static> Background<T> {
    /// Runs `job(stop, ready)` on a new thread called `name`, on a single-threaded Tokio
    /// runtime, and returns once the job calls `ready`. A job that ends before that (it
    /// could not load or attach its programs) gives its output back as the error.
    pub fn start<Job, Run>(name: &str, job: Job) -> Result<Self, T>
    where
        Job: FnOnce(StopSignal, ReadySignal) -> Run + Send + 'static,
        Run: Future<Output = T>,
    {
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let (attached, ready) = std::sync::mpsc::channel::<()>();
        let thread = std::thread::Builder::new()
            .name(name.into())
            .spawn(move || {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("a Tokio runtime for the background job");
                let stop: StopSignal = Box::pin(async {
                    let _ = stopped.await;
                });
                let ready: ReadySignal = Box::new(move || {
                    let _ = attached.send(());
                });
                runtime.block_on(job(stop, ready))
            })
            .expect("spawning the background job's thread");
        match ready.recv() {
            Ok(()) => Ok(Self {
                stop: Some(stop),
                thread: Some(thread),
            }),
            // The job ended without signalling: its output says why.
            Err(_) => Err(thread
                .join()
                .unwrap_or_else(|panic| std::panic::resume_unwind(panic))),
        }
    }

    /// Stops the job, waits for it to detach and returns its output.
    pub fn stop(mut self) -> T {
        match self.finish() {
            Some(Ok(output)) => output,
            Some(Err(panic)) => std::panic::resume_unwind(panic),
            None => unreachable!("a running job has a thread"),
        }
    }
}

impl<T> Background<T> {
    fn finish(&mut self) -> Option<std::thread::Result<T>> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        self.thread.take().map(std::thread::JoinHandle::join)
    }
}

impl<T> Drop for Background<T> {
    /// Detaches the programs even when a test fails before calling `stop`.
    fn drop(&mut self) {
        let _ = self.finish();
    }
}
