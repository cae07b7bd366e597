//! A bounded queue of finished requests, for backends that do their I/O inside `submit_*`
//! and report it at the next `poll` (the storage contract never completes inline). Its
//! length is the in-flight count; its capacity is fixed at construction, so neither submit
//! nor poll allocates.

use std::collections::{TryReserveError, VecDeque};

use super::{Completion, IoTag, StorageError};

#[derive(Debug)]
pub struct CompletionQueue {
    queue: VecDeque<Completion>,
    max_in_flight: u32,
    /// Capacity reserved in `new`; asserted unchanged so that `push` never allocates.
    capacity: usize,
}

/// An allocation sized by configuration that the machine cannot satisfy: an error, not an
/// abort.
pub fn out_of_memory(e: TryReserveError) -> StorageError {
    StorageError::Io {
        kind: std::io::ErrorKind::OutOfMemory,
        message: e.to_string(),
    }
}

impl CompletionQueue {
    pub fn new(max_in_flight: u32) -> Result<CompletionQueue, StorageError> {
        let mut queue = VecDeque::new();
        queue
            .try_reserve_exact(max_in_flight as usize)
            .map_err(out_of_memory)?;
        Ok(CompletionQueue {
            capacity: queue.capacity(),
            queue,
            max_in_flight,
        })
    }

    /// Room for one more request, or `QueueFull`.
    pub fn admit(&self) -> Result<(), StorageError> {
        debug_assert!(self.len() <= self.max_in_flight);
        if self.len() == self.max_in_flight {
            return Err(StorageError::QueueFull(self.max_in_flight));
        }
        Ok(())
    }

    /// Queues the outcome of an admitted request.
    pub fn push(&mut self, tag: IoTag, result: Result<(), StorageError>) {
        assert!(self.len() < self.max_in_flight, "push follows admit");
        self.queue.push_back(Completion { tag, result });
        debug_assert_eq!(self.queue.capacity(), self.capacity);
    }

    /// Moves up to `max` completions, oldest first, to `out`.
    pub fn poll(&mut self, out: &mut Vec<Completion>, max: usize) -> usize {
        let count = max.min(self.queue.len());
        out.extend(self.queue.drain(..count));
        count
    }

    pub fn len(&self) -> u32 {
        // Lossless: bounded by max_in_flight.
        self.queue.len() as u32
    }

    pub fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }
}
