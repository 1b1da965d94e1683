//! The response side of an exchange: how its body is read, by what the headers say it is.
//!
//! Each [`Reader`] variant carries exactly the state its kind of body needs, so that, for
//! example, an edited stream always has its editor and meter, and a JSON body never has a
//! meter.

use crate::body::budget::Lease;
use crate::body::capture::{Capture, Captured};
use crate::body::decode::{Coding, Decoder, Encoder};
use crate::stream::editor::StreamEditor;
use crate::stream::meter::StreamMeter;
use crate::tokens::tokenizer::Encoding;

/// How the response body is read.
// One reader per request, moved only when the headers arrive: boxing the stream's state
// would only add an allocation per streamed response.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
pub(super) enum Reader {
    /// A JSON (or any other non-stream) body: a bounded copy, read at settlement. Also the
    /// state before response headers arrive.
    Json {
        copy: Capture,
        /// Decodes gzip or deflate on the copy.
        decoder: Option<Decoder>,
    },
    /// An event stream, metered as it passes.
    Stream {
        meter: StreamMeter,
        decoder: Option<Decoder>,
        /// Present while usage was injected and the stream is edited back for the client.
        edit: Option<Edit>,
    },
    /// An edited stream whose upstream bytes stopped decoding: from the chunk that failed on,
    /// the upstream's bytes pass untouched and unread; what was metered before stays.
    Stopped { meter: StreamMeter },
    /// A content coding that is not read (or decoding is off).
    Unread,
}

/// The editing of an injected stream.
#[derive(Debug)]
pub(super) struct Edit {
    editor: StreamEditor,
    /// Compresses the edited stream again when the upstream compressed it.
    encoder: Option<Encoder>,
    /// Some chunk was sent in an edited form already.
    replaced: bool,
}

/// What one chunk came to.
#[derive(Debug, Default)]
pub(super) struct Fed {
    /// The bytes to send instead, when the stream is edited.
    pub replacement: Option<Vec<u8>>,
    /// An event with content passed (time to first token).
    pub saw_content: bool,
}

impl Reader {
    /// A JSON body's copy before anything is known of the response.
    pub fn new(max_body_bytes: usize, lease: Lease) -> Reader {
        Reader::Json {
            copy: Capture::within(max_body_bytes, lease),
            decoder: None,
        }
    }

    /// The reader for a response with these headers. `meter` is the stream meter, when the
    /// body is an event stream; `edit` whether it is edited (usage was injected). Buffers are
    /// leased from `lease`'s budget.
    pub fn for_response(
        coding: Coding,
        readable: bool,
        meter: Option<StreamMeter>,
        edit: bool,
        max_body_bytes: usize,
        lease: &Lease,
    ) -> Reader {
        if !readable {
            return Reader::Unread;
        }
        let compressed = matches!(coding, Coding::Gzip | Coding::Deflate);
        let decoder = if compressed {
            match Decoder::within(coding, lease.sibling()) {
                Some(d) => Some(d),
                // No room in the VM's memory budget: not read (the lease records it).
                None => return Reader::Unread,
            }
        } else {
            None
        };
        match meter {
            Some(meter) => Reader::Stream {
                meter,
                decoder,
                edit: match (edit, compressed) {
                    (false, _) => None,
                    (true, false) => Some(Edit {
                        editor: StreamEditor::new(lease.sibling()),
                        encoder: None,
                        replaced: false,
                    }),
                    // Without room for an encoder the stream passes as the upstream sent
                    // it (the lease records the refusal): an injection is declined before
                    // the budget gets this short (see `Exchange::request_complete`).
                    (true, true) => Encoder::within(coding, lease.sibling()).map(|encoder| Edit {
                        editor: StreamEditor::new(lease.sibling()),
                        encoder: Some(encoder),
                        replaced: false,
                    }),
                },
            },
            None => Reader::Json {
                copy: Capture::within(max_body_bytes, lease.sibling()),
                decoder,
            },
        }
    }

    /// Whether chunks are worth feeding.
    pub fn reads(&self) -> bool {
        matches!(self, Reader::Json { .. } | Reader::Stream { .. })
    }

    pub fn is_stream(&self) -> bool {
        matches!(self, Reader::Stream { .. })
    }

    pub fn is_edited(&self) -> bool {
        matches!(self, Reader::Stream { edit: Some(_), .. })
    }

    pub fn meter(&self) -> Option<&StreamMeter> {
        match self {
            Reader::Stream { meter, .. } | Reader::Stopped { meter } => Some(meter),
            Reader::Json { .. } | Reader::Unread => None,
        }
    }

    /// What settlement reads: the JSON body's copy, or the stream's meter.
    pub fn parts(&mut self) -> (Option<Captured<'_>>, Option<&mut StreamMeter>) {
        match self {
            Reader::Json { copy, .. } => (Some(copy.captured()), None),
            Reader::Stream { meter, .. } | Reader::Stopped { meter } => (None, Some(meter)),
            Reader::Unread => (None, None),
        }
    }

    /// The upstream's bytes claimed a coding they are not in.
    pub fn decoding_failed(&self) -> bool {
        match self {
            Reader::Json { decoder, .. } | Reader::Stream { decoder, .. } => {
                decoder.as_ref().is_some_and(Decoder::failed)
            }
            Reader::Stopped { .. } | Reader::Unread => false,
        }
    }

    /// One response body chunk.
    pub fn feed(&mut self, chunk: &[u8], enc: Encoding) -> Fed {
        let mut saw_content = false;
        let mut stopped = false;
        let replacement = match self {
            Reader::Stream {
                meter,
                decoder,
                edit: Some(edit),
            } => {
                // The meter reads the upstream's stream; the editor writes the client's.
                let editor = &mut edit.editor;
                let mut plain = Vec::with_capacity(chunk.len());
                let failed = match decoder.as_mut() {
                    Some(d) => {
                        d.feed(chunk, &mut |p| {
                            saw_content |= meter.feed(p, enc).content;
                            editor.feed(p, &mut plain);
                        });
                        d.failed()
                    }
                    None => {
                        saw_content |= meter.feed(chunk, enc).content;
                        editor.feed(chunk, &mut plain);
                        false
                    }
                };
                if failed {
                    // The upstream's bytes are not what they claim: from this chunk on they
                    // pass as they are. What was sent edited before is ended cleanly first.
                    stopped = true;
                    match edit.encoder.take() {
                        Some(mut e) if edit.replaced => {
                            let mut out = e.encode(&plain);
                            out.extend(e.finish());
                            out.extend_from_slice(chunk);
                            Some(out)
                        }
                        // Nothing replaced yet: the chunk goes on untouched.
                        _ => None,
                    }
                } else {
                    edit.replaced = true;
                    Some(match edit.encoder.as_mut() {
                        Some(e) => e.encode(&plain),
                        None => plain,
                    })
                }
            }
            Reader::Stream {
                meter,
                decoder,
                edit: None,
            } => {
                let mut read = |bytes: &[u8]| saw_content |= meter.feed(bytes, enc).content;
                match decoder.as_mut() {
                    Some(d) => d.feed(chunk, &mut read),
                    None => read(chunk),
                }
                None
            }
            Reader::Json { copy, decoder } => {
                match decoder.as_mut() {
                    Some(d) => d.feed(chunk, &mut |b| copy.push(b)),
                    None => copy.push(chunk),
                }
                None
            }
            Reader::Stopped { .. } | Reader::Unread => None,
        };
        if stopped {
            if let Reader::Stream { meter, .. } = std::mem::replace(self, Reader::Unread) {
                *self = Reader::Stopped { meter };
            }
        }
        Fed {
            replacement,
            saw_content,
        }
    }

    /// The end of the body: the bytes an edited stream still holds, to send last.
    pub fn end(&mut self) -> Option<Vec<u8>> {
        let Reader::Stream { edit, .. } = self else {
            return None;
        };
        let Edit {
            mut editor,
            encoder,
            ..
        } = edit.take()?;
        let mut rest = Vec::new();
        editor.finish(&mut rest);
        let rest = match encoder {
            Some(mut e) => {
                let mut out = e.encode(&rest);
                out.extend(e.finish());
                out
            }
            None => rest,
        };
        (!rest.is_empty()).then_some(rest)
    }
}
