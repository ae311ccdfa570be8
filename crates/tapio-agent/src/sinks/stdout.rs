//! JSON lines on standard output, buffered and flushed whenever the queue runs dry.

use super::Sink;
use std::io::{self, BufWriter, Stdout, Write};

pub struct StdoutSink {
    out: BufWriter<Stdout>,
}

impl StdoutSink {
    pub fn new() -> Self {
        Self { out: BufWriter::with_capacity(64 * 1024, io::stdout()) }
    }
}

impl Default for StdoutSink {
    fn default() -> Self {
        Self::new()
    }
}

impl Sink for StdoutSink {
    fn name(&self) -> &'static str {
        "stdout"
    }

    fn write_line(&mut self, line: &[u8]) -> io::Result<()> {
        self.out.write_all(line)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }
}
