//! A one-shot shutdown signal shared by the signal handler thread, the
//! management thread (`tgtadm --op delete --mode system`) and the main thread.

use std::sync::{Condvar, Mutex};

#[derive(Default)]
pub struct Shutdown {
    requested: Mutex<bool>,
    cv: Condvar,
}

impl Shutdown {
    pub fn trigger(&self) {
        *self.requested.lock().unwrap_or_else(|e| e.into_inner()) = true;
        self.cv.notify_all();
    }

    /// Block until triggered.
    pub fn wait(&self) {
        let mut g = self.requested.lock().unwrap_or_else(|e| e.into_inner());
        while !*g {
            g = self.cv.wait(g).unwrap_or_else(|e| e.into_inner());
        }
    }
}
