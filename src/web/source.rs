//! Model bytes from JavaScript: a synchronous `readInto(offset, dest)` (an OPFS access handle or
//! `FileReaderSync` over a `File`, both available only in workers), wrapped as the engine's
//! [`TensorSource`] for loading and [`RowSource`] for the per-token table reads.

use std::cell::Cell;
use std::rc::Rc;
use std::sync::Arc;

use wasm_bindgen::prelude::*;
use wasm_bindgen::JsCast;

use crate::gguf::{RowSource, TensorSource};
use crate::{Error, Result};

#[wasm_bindgen]
extern "C" {
    /// `{ size: number, readInto(offset: number, dest: Uint8Array): void }`.
    #[derive(Clone, Debug)]
    pub type ByteSource;

    #[wasm_bindgen(method, getter)]
    fn size(this: &ByteSource) -> JsValue;

    #[wasm_bindgen(method, catch, js_name = readInto)]
    fn read_into(
        this: &ByteSource,
        offset: f64,
        dest: &mut [u8],
    ) -> std::result::Result<(), JsValue>;
}

/// Bytes read between two yields to the worker's event loop while loading: lets progress
/// messages and a `cancel` through without slowing the load.
const YIELD_EVERY: u64 = 16 << 20;

/// A [`ByteSource`] with its size, checked reads and cooperative cancellation.
#[derive(Clone, Debug)]
pub struct JsSource {
    js: ByteSource,
    size: u64,
    cancel: Rc<Cell<bool>>,
    since_yield: Rc<Cell<u64>>,
}

impl JsSource {
    pub fn new(js: ByteSource, cancel: Rc<Cell<bool>>) -> Result<Self> {
        let size = js.size().as_f64().filter(|s| *s >= 0.0 && s.fract() == 0.0);
        let Some(size) = size else {
            return Err(Error::InvalidArgument(
                "the model source must have a numeric `size` (bytes)".into(),
            ));
        };
        Ok(Self {
            js,
            size: size as u64,
            cancel,
            since_yield: Rc::new(Cell::new(0)),
        })
    }

    /// The same source for per-token row reads after loading.
    #[allow(clippy::arc_with_non_send_sync)] // wasm is single-threaded; the trait wants an Arc
    pub fn rows(&self) -> Arc<dyn RowSource> {
        Arc::new(self.clone())
    }

    fn read(&self, offset: u64, buf: &mut [u8]) -> Result<()> {
        let end = offset.checked_add(buf.len() as u64);
        if end.is_none_or(|e| e > self.size) {
            return Err(Error::Truncated(format!(
                "read of {} bytes at offset {offset} passes the end of the file ({} bytes)",
                buf.len(),
                self.size
            )));
        }
        self.js.read_into(offset as f64, buf).map_err(|e| {
            let msg = e
                .dyn_ref::<js_sys::Error>()
                .map(|e| String::from(e.message()))
                .or_else(|| e.as_string())
                .unwrap_or_else(|| format!("{e:?}"));
            Error::Read(format!("{} bytes at offset {offset}: {msg}", buf.len()))
        })
    }
}

impl TensorSource for JsSource {
    fn len(&self) -> Option<u64> {
        Some(self.size)
    }

    async fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> Result<()> {
        if self.cancel.get() {
            return Err(Error::Aborted("loading was cancelled".into()));
        }
        self.read(offset, buf)?;
        let n = self.since_yield.get() + buf.len() as u64;
        if n >= YIELD_EVERY {
            self.since_yield.set(0);
            yield_to_event_loop().await;
        } else {
            self.since_yield.set(n);
        }
        Ok(())
    }
}

impl RowSource for JsSource {
    fn read_rows(&self, offset: u64, buf: &mut [u8]) -> Result<()> {
        self.read(offset, buf)
    }
}

/// Resolves on a fresh macrotask (`setTimeout(0)`), so queued messages run first.
async fn yield_to_event_loop() {
    let promise = js_sys::Promise::new(&mut |resolve, _| {
        let global = js_sys::global();
        let set_timeout = js_sys::Reflect::get(&global, &"setTimeout".into())
            .ok()
            .and_then(|f| f.dyn_into::<js_sys::Function>().ok());
        match set_timeout {
            Some(f) => {
                let _ = f.call2(&global, &resolve, &0.into());
            }
            None => {
                let _ = resolve.call0(&JsValue::NULL);
            }
        }
    });
    let _ = wasm_bindgen_futures::JsFuture::from(promise).await;
}
