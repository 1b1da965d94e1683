//! The request and response bodies as settlement reads them, each parsed once at most.
//!
//! A body is kept as a bounded copy ([`Captured`]). Settlement wants different things of
//! it: the model and user, usage, the fields a dimension names, the texts to estimate
//! tokens from, the question and answer of a record. Each view below parses its body into
//! a JSON tree lazily, at most once, and every consumer shares that tree. When nothing
//! needs the tree, the few fields metering always needs are read in one typed pass
//! instead, which allocates far less: so the caller says up front whether the tree will
//! be wanted.
//!
//! Two passes remain, both rare: a response whose body names `usage` is read typed, and
//! only if that usage turns out absent (`"usage": null`) is it parsed again to count its
//! tokens; and a body the tree refuses but a typed pass accepts (a lone surrogate escape
//! inside text the typed pass skips) is read typed, as it always was. Where the tree is
//! read, a key given twice takes its last value.

use std::cell::OnceCell;

use serde::Deserialize;
use serde_json::Value;

use crate::body::capture::Captured;
use crate::body::jsonscan::{field_in_head, field_in_tail};
use crate::openai::api::Operation;
use crate::openai::usage::{self, lenient, ResponseFacts};
use crate::records::collect;
use crate::tokens::estimate;
use crate::tokens::tokenizer::Encoding;

/// A body's JSON tree, parsed on first use.
struct Tree<'a> {
    /// The whole body, when it was kept whole.
    bytes: Option<&'a [u8]>,
    tree: OnceCell<Option<Value>>,
}

impl<'a> Tree<'a> {
    fn new(bytes: Option<&'a [u8]>) -> Tree<'a> {
        Tree {
            bytes,
            tree: OnceCell::new(),
        }
    }

    fn get(&self) -> Option<&Value> {
        self.tree
            .get_or_init(|| {
                let bytes = self.bytes?;
                passes::count();
                serde_json::from_slice(bytes).ok()
            })
            .as_ref()
    }
}

/// Counts the passes over body bytes, so that a test can hold settlement to its promise.
pub(super) mod passes {
    #[cfg(test)]
    thread_local! {
        static PASSES: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
    }

    #[inline]
    pub fn count() {
        #[cfg(test)]
        PASSES.with(|p| p.set(p.get() + 1));
    }

    /// Passes made on this thread since the last call.
    #[cfg(test)]
    pub fn take() -> usize {
        PASSES.with(|p| p.replace(0))
    }
}

/// The request fields metering always reads.
#[derive(Deserialize)]
struct RequestFields {
    #[serde(default, deserialize_with = "lenient")]
    model: Option<String>,
    #[serde(default, deserialize_with = "lenient")]
    user: Option<String>,
    #[serde(default, deserialize_with = "lenient")]
    safety_identifier: Option<String>,
}

/// The request body at settlement.
pub(super) struct RequestBody<'a> {
    pub model: Option<String>,
    /// `user`, else `safety_identifier`.
    pub user: Option<String>,
    /// The body is a JSON object (body fields can be read from it).
    object: bool,
    cut: bool,
    tree: Tree<'a>,
}

impl<'a> RequestBody<'a> {
    /// `wants_tree`: whether dimensions, estimates or records will read the tree.
    pub fn read(body: Captured<'a>, wants_tree: bool) -> RequestBody<'a> {
        let (bytes, cut) = match body {
            Captured::Whole(bytes) => (Some(bytes), false),
            Captured::Edges { .. } => (None, true),
        };
        let tree = Tree::new(bytes);
        let fields = match bytes {
            Some(bytes) if wants_tree => match tree.get() {
                Some(v) => RequestFields::deserialize(v).ok(),
                None => {
                    passes::count();
                    serde_json::from_slice::<RequestFields>(bytes).ok()
                }
            },
            Some(bytes) => {
                passes::count();
                serde_json::from_slice::<RequestFields>(bytes).ok()
            }
            None => None,
        };
        let (model, user, object) = match fields {
            Some(f) => (f.model, f.user.or(f.safety_identifier), true),
            None => {
                // Cut off, or not quite JSON: take what a scan can still find.
                let (head, tail) = match body {
                    Captured::Whole(bytes) => (bytes, bytes),
                    Captured::Edges { head, tail } => (head, tail),
                };
                let field = |key: &str| -> Option<String> {
                    field_in_head::<String>(head, key)
                        .or_else(|| field_in_tail::<String>(tail, key))
                };
                (
                    field("model"),
                    field("user").or_else(|| field("safety_identifier")),
                    false,
                )
            }
        };
        RequestBody {
            model,
            user,
            object,
            cut,
            tree,
        }
    }

    /// The parsed body, for records and estimates: any JSON kept whole.
    pub fn tree(&self) -> Option<&Value> {
        self.tree.get()
    }

    /// The parsed body for dimensions that name a body field: only a readable object.
    pub fn fields(&self) -> Option<&Value> {
        self.object.then(|| self.tree()).flatten()
    }

    /// Only the body's edges were kept.
    pub fn is_cut(&self) -> bool {
        self.cut
    }

    /// Prompt tokens by the body's texts; about four bytes a token for a body too large to
    /// keep whole, whose size was `total`.
    pub fn prompt_tokens(&self, op: Operation, enc: Encoding, total: u64) -> u64 {
        if self.cut {
            return total.div_ceil(4);
        }
        self.tree()
            .map_or(0, |json| estimate::prompt_tokens(op, json, enc))
    }
}

/// A JSON response body at settlement (streams are read as they pass, elsewhere).
pub(super) struct ResponseBody<'a> {
    pub facts: ResponseFacts,
    /// `None` when the response was not a JSON body.
    captured: Option<Captured<'a>>,
    tree: Tree<'a>,
}

impl<'a> ResponseBody<'a> {
    /// `body`: the JSON body's copy, `None` for any other response. `wants_tree`: whether
    /// dimensions or records will read the tree; `may_estimate`: whether the response could
    /// need counting (a success), in which case a body that cannot hold usage is parsed
    /// into the tree straight away.
    pub fn read(body: Option<Captured<'a>>, wants_tree: bool, may_estimate: bool) -> Self {
        let bytes = match body {
            Some(Captured::Whole(bytes)) => Some(bytes),
            _ => None,
        };
        let tree = Tree::new(bytes);
        let facts = match (body, bytes) {
            (None, _) => ResponseFacts::default(),
            (Some(_), Some(bytes)) => {
                let no_usage = !crate::stream::meter::names_usage(bytes);
                if wants_tree || (may_estimate && no_usage) {
                    match tree.get() {
                        Some(v) => {
                            usage::from_tree(v).unwrap_or_else(|| usage::from_edges(bytes, bytes))
                        }
                        None => {
                            passes::count();
                            usage::from_response(Captured::Whole(bytes))
                        }
                    }
                } else {
                    passes::count();
                    usage::from_response(Captured::Whole(bytes))
                }
            }
            (Some(captured), None) => usage::from_response(captured),
        };
        ResponseBody {
            facts,
            captured: body,
            tree,
        }
    }

    /// The parsed body, when the response was JSON kept whole.
    pub fn tree(&self) -> Option<&Value> {
        self.tree.get()
    }

    /// The response is a JSON object kept whole (an answer, not an error page or a cut-off
    /// body).
    pub fn is_object(&self) -> bool {
        self.tree().is_some_and(Value::is_object)
    }

    /// Tokens of the answer's texts.
    pub fn completion_tokens(&self, op: Operation, enc: Encoding) -> u64 {
        self.tree()
            .map_or(0, |json| estimate::response_text_tokens(op, json, enc))
    }

    /// The answer for a record, and whether it was cut (the body was too large to keep).
    pub fn answer(&self, op: Operation) -> (Option<String>, bool) {
        match self.captured {
            Some(Captured::Whole(_)) => (
                self.tree()
                    .and_then(|v| collect::answer_from_response(op, v)),
                false,
            ),
            Some(Captured::Edges { .. }) => (None, true),
            None => (None, false),
        }
    }
}
