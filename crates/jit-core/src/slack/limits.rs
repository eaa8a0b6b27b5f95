//! Slack's limits, in one place: the numbers, a validator that says where a message or view
//! breaks them (Slack's own `[ERROR] … [json-pointer:…]` lines), and the helpers every Block
//! Kit builder uses to stay within them.
//!
//! - **One definition.** The builders (`blocks`, `views`, `home`, `commands`) shape their
//!   output with [`sections`], [`truncate_mrkdwn`], [`plain`] and [`fit_message`]; the
//!   simulator refuses a call when [`check_message`] or [`check_view`] finds a violation; the
//!   property tests run every builder's output through the same validator.
//! - **Length.** Slack documents its limits in characters. Lengths here are UTF-16 code units
//!   ([`len`]): never fewer than characters, so text that fits here fits in Slack whichever way
//!   it counts an emoji.
//! - **Splitting.** Long mrkdwn is split across sections at line boundaries where it can be,
//!   else at spaces, else between grapheme clusters, and never inside a code span, a mention or
//!   link (`<@U…>`, `<#C…>`, `<!date…|…>`, `<url|text>`) or an HTML entity (`&amp;`). A code
//!   block (```` ``` ````) that does not fit is closed at the end of one section and reopened
//!   at the start of the next, so every section renders on its own and the code reads in full.

use serde_json::{Map, Value, json};
use unicode_segmentation::UnicodeSegmentation;

/// Blocks in a message.
pub const MESSAGE_BLOCKS: usize = 50;
/// Blocks in a modal or an App Home view.
pub const VIEW_BLOCKS: usize = 100;
/// A message's `text` (the fallback shown in notifications).
pub const MESSAGE_TEXT: usize = 40_000;
/// A section's text.
pub const SECTION_TEXT: usize = 3_000;
/// Fields in a section, and the text of each.
pub const SECTION_FIELDS: usize = 10;
pub const SECTION_FIELD_TEXT: usize = 2_000;
/// A header's text.
pub const HEADER_TEXT: usize = 150;
/// Elements in a context block, and the text of each.
pub const CONTEXT_ELEMENTS: usize = 10;
pub const CONTEXT_TEXT: usize = 3_000;
/// Elements in an actions block.
pub const ACTIONS_ELEMENTS: usize = 25;
/// A button's label, value and URL.
pub const BUTTON_TEXT: usize = 75;
pub const BUTTON_VALUE: usize = 2_000;
pub const BUTTON_URL: usize = 3_000;
/// `action_id`, `block_id`, `callback_id` and `external_id`.
pub const ID: usize = 255;
/// Options in a static select, and an option's text, value and description.
pub const OPTIONS: usize = 100;
pub const OPTION_TEXT: usize = 75;
pub const OPTION_VALUE: usize = 150;
/// A placeholder.
pub const PLACEHOLDER: usize = 150;
/// An input's label and hint.
pub const LABEL: usize = 2_000;
/// The most a `plain_text_input` may allow (`max_length`).
pub const INPUT_MAX_LENGTH: usize = 3_000;
/// A modal's title and its submit and close labels.
pub const MODAL_TITLE: usize = 24;
/// A view's `private_metadata`.
pub const PRIVATE_METADATA: usize = 3_000;

/// The length Slack's limits are checked against: UTF-16 code units.
pub fn len(text: &str) -> usize {
    text.encode_utf16().count()
}

// ---------------------------------------------------------------------------------------------
// Validation
// ---------------------------------------------------------------------------------------------

/// One broken limit: where (a JSON pointer into the request) and what.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    pub pointer: String,
    pub message: String,
}

impl std::fmt::Display for Violation {
    /// The line Slack puts in `response_metadata.messages`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "[ERROR] {} [json-pointer:{}]",
            self.message, self.pointer
        )
    }
}

struct Checker {
    found: Vec<Violation>,
}

impl Checker {
    fn new() -> Self {
        Checker { found: Vec::new() }
    }

    fn fail(&mut self, pointer: &str, message: impl Into<String>) {
        self.found.push(Violation {
            pointer: pointer.to_owned(),
            message: message.into(),
        });
    }

    /// A string of at most `max` units (and at least one), if present.
    fn string(&mut self, value: Option<&Value>, pointer: &str, max: usize, required: bool) {
        match value {
            None | Some(Value::Null) => {
                if required {
                    self.fail(pointer, "missing required field");
                }
            }
            Some(Value::String(s)) => {
                let n = len(s);
                if n == 0 {
                    self.fail(pointer, "must be more than 0 characters");
                } else if n > max {
                    self.fail(pointer, format!("must be less than {} characters", max + 1));
                }
            }
            Some(_) => self.fail(pointer, "must be a string"),
        }
    }

    /// A text object (`{"type": "plain_text" | "mrkdwn", "text": …}`).
    fn text_object(
        &mut self,
        value: Option<&Value>,
        pointer: &str,
        max: usize,
        plain_only: bool,
        required: bool,
    ) {
        let Some(value) = value.filter(|v| !v.is_null()) else {
            if required {
                self.fail(pointer, "missing required field");
            }
            return;
        };
        let Some(object) = value.as_object() else {
            self.fail(pointer, "must be a text object");
            return;
        };
        match object.get("type").and_then(Value::as_str) {
            Some("plain_text") => {}
            Some("mrkdwn") if !plain_only => {}
            Some("mrkdwn") => self.fail(
                &format!("{pointer}/type"),
                "must be plain_text here, not mrkdwn",
            ),
            _ => self.fail(
                &format!("{pointer}/type"),
                "must be one of plain_text, mrkdwn",
            ),
        }
        self.string(object.get("text"), &format!("{pointer}/text"), max, true);
    }

    fn id(&mut self, object: &Map<String, Value>, key: &str, pointer: &str) {
        if object.contains_key(key) {
            self.string(object.get(key), &format!("{pointer}/{key}"), ID, false);
        }
    }

    fn blocks(&mut self, blocks: Option<&Value>, pointer: &str, max_blocks: usize) {
        let Some(blocks) = blocks.filter(|b| !b.is_null()) else {
            return;
        };
        let Some(list) = blocks.as_array() else {
            self.fail(pointer, "must be an array");
            return;
        };
        if list.len() > max_blocks {
            self.fail(
                pointer,
                format!("must be less than {} items", max_blocks + 1),
            );
        }
        let mut block_ids: Vec<&str> = Vec::new();
        for (index, block) in list.iter().enumerate() {
            let at = format!("{pointer}/{index}");
            if let Some(id) = block.get("block_id").and_then(Value::as_str) {
                if block_ids.contains(&id) {
                    self.fail(&format!("{at}/block_id"), "must be unique in the list");
                }
                block_ids.push(id);
            }
            self.block(block, &at);
        }
    }

    fn block(&mut self, block: &Value, at: &str) {
        let Some(object) = block.as_object() else {
            self.fail(at, "must be an object");
            return;
        };
        self.id(object, "block_id", at);
        let kind = object.get("type").and_then(Value::as_str).unwrap_or("");
        match kind {
            "section" => {
                let text = object.get("text");
                let fields = object.get("fields").and_then(Value::as_array);
                if text.is_none() && fields.is_none() {
                    self.fail(at, "must provide either text or fields");
                }
                self.text_object(text, &format!("{at}/text"), SECTION_TEXT, false, false);
                if let Some(fields) = fields {
                    if fields.len() > SECTION_FIELDS {
                        self.fail(
                            &format!("{at}/fields"),
                            format!("must be less than {} items", SECTION_FIELDS + 1),
                        );
                    }
                    for (i, field) in fields.iter().enumerate() {
                        self.text_object(
                            Some(field),
                            &format!("{at}/fields/{i}"),
                            SECTION_FIELD_TEXT,
                            false,
                            true,
                        );
                    }
                }
                if let Some(accessory) = object.get("accessory") {
                    self.element(accessory, &format!("{at}/accessory"));
                }
            }
            "header" => self.text_object(
                object.get("text"),
                &format!("{at}/text"),
                HEADER_TEXT,
                true,
                true,
            ),
            "context" => {
                let elements = self.elements(object, at, CONTEXT_ELEMENTS);
                for (i, element) in elements.iter().enumerate() {
                    let pointer = format!("{at}/elements/{i}");
                    match element.get("type").and_then(Value::as_str) {
                        Some("image") => self.image(element, &pointer),
                        _ => self.text_object(Some(element), &pointer, CONTEXT_TEXT, false, true),
                    }
                }
            }
            "actions" => {
                let elements = self.elements(object, at, ACTIONS_ELEMENTS);
                let mut action_ids: Vec<&str> = Vec::new();
                for (i, element) in elements.iter().enumerate() {
                    let pointer = format!("{at}/elements/{i}");
                    if let Some(id) = element.get("action_id").and_then(Value::as_str) {
                        if action_ids.contains(&id) {
                            self.fail(
                                &format!("{pointer}/action_id"),
                                "must be unique in the block",
                            );
                        }
                        action_ids.push(id);
                    }
                    self.element(element, &pointer);
                }
            }
            "input" => {
                self.text_object(
                    object.get("label"),
                    &format!("{at}/label"),
                    LABEL,
                    true,
                    true,
                );
                self.text_object(
                    object.get("hint"),
                    &format!("{at}/hint"),
                    LABEL,
                    true,
                    false,
                );
                match object.get("element") {
                    Some(element) => self.element(element, &format!("{at}/element")),
                    None => self.fail(&format!("{at}/element"), "missing required field"),
                }
            }
            "image" => self.image(block, at),
            "divider" | "markdown" | "rich_text" | "file" | "video" | "rich_text_section" => {}
            "" => self.fail(&format!("{at}/type"), "missing required field"),
            other => self.fail(&format!("{at}/type"), format!("unknown block type {other}")),
        }
    }

    fn elements<'v>(
        &mut self,
        object: &'v Map<String, Value>,
        at: &str,
        max: usize,
    ) -> &'v [Value] {
        let Some(elements) = object.get("elements").and_then(Value::as_array) else {
            self.fail(&format!("{at}/elements"), "missing required field");
            return &[];
        };
        if elements.is_empty() {
            self.fail(&format!("{at}/elements"), "must have at least 1 item");
        }
        if elements.len() > max {
            self.fail(
                &format!("{at}/elements"),
                format!("must be less than {} items", max + 1),
            );
        }
        elements
    }

    fn image(&mut self, image: &Value, at: &str) {
        self.string(
            image.get("alt_text"),
            &format!("{at}/alt_text"),
            2_000,
            true,
        );
    }

    fn element(&mut self, element: &Value, at: &str) {
        let Some(object) = element.as_object() else {
            self.fail(at, "must be an object");
            return;
        };
        self.id(object, "action_id", at);
        match object.get("type").and_then(Value::as_str).unwrap_or("") {
            "button" => {
                self.text_object(
                    object.get("text"),
                    &format!("{at}/text"),
                    BUTTON_TEXT,
                    true,
                    true,
                );
                if object.contains_key("value") {
                    self.string(
                        object.get("value"),
                        &format!("{at}/value"),
                        BUTTON_VALUE,
                        false,
                    );
                }
                if object.contains_key("url") {
                    self.string(object.get("url"), &format!("{at}/url"), BUTTON_URL, false);
                }
            }
            "static_select" | "multi_static_select" | "radio_buttons" | "checkboxes" => {
                self.text_object(
                    object.get("placeholder"),
                    &format!("{at}/placeholder"),
                    PLACEHOLDER,
                    true,
                    false,
                );
                self.options(object, at);
            }
            "plain_text_input" => {
                self.text_object(
                    object.get("placeholder"),
                    &format!("{at}/placeholder"),
                    PLACEHOLDER,
                    true,
                    false,
                );
                let max_length = object.get("max_length").and_then(Value::as_u64);
                if let Some(max_length) = max_length
                    && max_length > INPUT_MAX_LENGTH as u64
                {
                    self.fail(
                        &format!("{at}/max_length"),
                        format!("must be less than {}", INPUT_MAX_LENGTH + 1),
                    );
                }
                let allowed = max_length
                    .map(|m| m.min(INPUT_MAX_LENGTH as u64) as usize)
                    .unwrap_or(INPUT_MAX_LENGTH);
                if let Some(initial) = object.get("initial_value").and_then(Value::as_str)
                    && len(initial) > allowed
                {
                    self.fail(
                        &format!("{at}/initial_value"),
                        format!("must be less than {} characters", allowed + 1),
                    );
                }
            }
            // Slack's datetimepicker has no placeholder, and takes its initial value as unix
            // seconds (a number, not a string); it sends back `selected_date_time` the same way.
            "datetimepicker" => {
                if object.contains_key("placeholder") {
                    self.fail(
                        &format!("{at}/placeholder"),
                        "is not a property of a datetimepicker",
                    );
                }
                if let Some(initial) = object.get("initial_date_time")
                    && initial.as_i64().is_none_or(|s| s < 0)
                {
                    self.fail(
                        &format!("{at}/initial_date_time"),
                        "must be a unix timestamp in seconds (an integer)",
                    );
                }
            }
            "image" => self.image(element, at),
            "" => self.fail(&format!("{at}/type"), "missing required field"),
            _ => {}
        }
    }

    fn options(&mut self, object: &Map<String, Value>, at: &str) {
        let mut all: Vec<&Value> = Vec::new();
        if let Some(options) = object.get("options").and_then(Value::as_array) {
            if options.len() > OPTIONS {
                self.fail(
                    &format!("{at}/options"),
                    format!("must be less than {} items", OPTIONS + 1),
                );
            }
            if options.is_empty() {
                self.fail(&format!("{at}/options"), "must have at least 1 item");
            }
            for (i, option) in options.iter().enumerate() {
                self.option(option, &format!("{at}/options/{i}"));
                all.push(option);
            }
        }
        if let Some(groups) = object.get("option_groups").and_then(Value::as_array) {
            if groups.len() > OPTIONS {
                self.fail(
                    &format!("{at}/option_groups"),
                    format!("must be less than {} items", OPTIONS + 1),
                );
            }
            for (g, group) in groups.iter().enumerate() {
                let pointer = format!("{at}/option_groups/{g}");
                self.text_object(
                    group.get("label"),
                    &format!("{pointer}/label"),
                    OPTION_TEXT,
                    true,
                    true,
                );
                let options = group
                    .get("options")
                    .and_then(Value::as_array)
                    .map(Vec::as_slice)
                    .unwrap_or_default();
                if options.len() > OPTIONS {
                    self.fail(
                        &format!("{pointer}/options"),
                        format!("must be less than {} items", OPTIONS + 1),
                    );
                }
                for (i, option) in options.iter().enumerate() {
                    self.option(option, &format!("{pointer}/options/{i}"));
                    all.push(option);
                }
            }
        }
        if let Some(initial) = object.get("initial_option") {
            self.option(initial, &format!("{at}/initial_option"));
            if !all.iter().any(|o| same_option(o, initial)) {
                self.fail(
                    &format!("{at}/initial_option"),
                    "must match one of the provided options",
                );
            }
        }
    }

    fn option(&mut self, option: &Value, at: &str) {
        self.text_object(
            option.get("text"),
            &format!("{at}/text"),
            OPTION_TEXT,
            false,
            true,
        );
        self.string(
            option.get("value"),
            &format!("{at}/value"),
            OPTION_VALUE,
            true,
        );
        self.text_object(
            option.get("description"),
            &format!("{at}/description"),
            OPTION_TEXT,
            true,
            false,
        );
    }
}

fn same_option(a: &Value, b: &Value) -> bool {
    a.get("value") == b.get("value")
        && a.get("text").and_then(|t| t.get("text")) == b.get("text").and_then(|t| t.get("text"))
}

/// What Slack would refuse in a `chat.*` call's `text` and `blocks`.
pub fn check_message(text: Option<&str>, blocks: Option<&Value>) -> Vec<Violation> {
    let mut checker = Checker::new();
    if let Some(text) = text
        && len(text) > MESSAGE_TEXT
    {
        checker.fail(
            "/text",
            format!("must be less than {} characters", MESSAGE_TEXT + 1),
        );
    }
    checker.blocks(blocks, "/blocks", MESSAGE_BLOCKS);
    checker.found
}

/// What Slack would refuse in a `views.*` call's `view` (pointers start at `/view`).
pub fn check_view(view: &Value) -> Vec<Violation> {
    let mut checker = Checker::new();
    let Some(object) = view.as_object() else {
        checker.fail("/view", "must be an object");
        return checker.found;
    };
    let kind = object.get("type").and_then(Value::as_str).unwrap_or("");
    match kind {
        "modal" => {
            checker.text_object(object.get("title"), "/view/title", MODAL_TITLE, true, true);
            for key in ["submit", "close"] {
                checker.text_object(
                    object.get(key),
                    &format!("/view/{key}"),
                    MODAL_TITLE,
                    true,
                    false,
                );
            }
            let has_input = object
                .get("blocks")
                .and_then(Value::as_array)
                .is_some_and(|b| b.iter().any(|b| b.get("type") == Some(&json!("input"))));
            if has_input && object.get("submit").is_none() {
                checker.fail(
                    "/view/submit",
                    "must be provided when the view has input blocks",
                );
            }
        }
        "home" => {}
        _ => checker.fail("/view/type", "must be one of modal, home"),
    }
    for key in ["callback_id", "external_id"] {
        checker.id(object, key, "/view");
    }
    if let Some(metadata) = object.get("private_metadata") {
        match metadata.as_str() {
            Some(m) if len(m) > PRIVATE_METADATA => checker.fail(
                "/view/private_metadata",
                format!("must be less than {} characters", PRIVATE_METADATA + 1),
            ),
            Some(_) => {}
            None => checker.fail("/view/private_metadata", "must be a string"),
        }
    }
    match object.get("blocks") {
        Some(blocks) if blocks.is_array() => {
            checker.blocks(Some(blocks), "/view/blocks", VIEW_BLOCKS);
        }
        _ => checker.fail("/view/blocks", "must be an array"),
    }
    checker.found
}

/// What Slack would refuse in a synchronous reply: the HTTP response body jit gives a slash
/// command or an interaction, or the `payload` of a Socket Mode acknowledgement. A message
/// (`text`, `blocks`, `response_type`) is held to [`check_message`]; a view submission's
/// `response_action` to its own rules (`update` and `push` carry a view, [`check_view`]).
/// `Null` is the empty body, which Slack takes as a plain acknowledgement.
pub fn check_reply(body: &Value) -> Vec<Violation> {
    let mut checker = Checker::new();
    let object = match body {
        Value::Null => return checker.found,
        // A plain-text body is shown as the message's text.
        Value::String(text) => return check_message(Some(text), None),
        Value::Object(object) => object,
        _ => {
            checker.fail("", "must be an object");
            return checker.found;
        }
    };
    if let Some(action) = object.get("response_action") {
        match action.as_str() {
            Some("clear") => {}
            Some("update" | "push") => match object.get("view") {
                Some(view) => return check_view(view),
                None => checker.fail("/view", "missing required field"),
            },
            Some("errors") => match object.get("errors").and_then(Value::as_object) {
                Some(errors) if !errors.is_empty() => {
                    for (block, message) in errors {
                        let pointer = format!("/errors/{block}");
                        checker.string(Some(message), &pointer, usize::MAX, true);
                    }
                }
                _ => checker.fail("/errors", "must be an object naming at least one block"),
            },
            _ => checker.fail(
                "/response_action",
                "must be one of errors, update, push, clear",
            ),
        }
        return checker.found;
    }
    if let Some(kind) = object.get("response_type")
        && !matches!(kind.as_str(), Some("ephemeral" | "in_channel"))
    {
        checker.fail("/response_type", "must be one of ephemeral, in_channel");
    }
    let text = object.get("text");
    let blocks = object.get("blocks").filter(|b| !b.is_null());
    if text.is_none() && blocks.is_none() {
        checker.fail("", "must provide text or blocks");
    }
    if text.is_some_and(|t| !t.is_string()) {
        checker.fail("/text", "must be a string");
    }
    let mut found = checker.found;
    found.extend(check_message(text.and_then(Value::as_str), blocks));
    found
}

// ---------------------------------------------------------------------------------------------
// Building within the limits
// ---------------------------------------------------------------------------------------------

/// How good a place to cut is; higher is better.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Cut {
    /// Never here (next to a code fence: the section would show an empty code block).
    Never,
    /// Inside a grapheme cluster (a letter and its combining marks, an emoji sequence).
    Split,
    /// Inside a code span, mention, link or entity: only when the span alone is too long.
    Hard,
    /// Between graphemes.
    Char,
    /// After a space.
    Space,
    /// After a line break.
    Line,
}

/// What a cut at a position leaves open, to be closed and reopened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Open {
    None,
    /// Inside `` `code` ``.
    Inline,
    /// Inside a ```` ``` ```` block.
    Block,
    /// Inside a `>` quote line.
    Quote,
}

impl Open {
    fn close(self) -> &'static str {
        match self {
            Open::Inline => "`",
            Open::Block => "```",
            Open::None | Open::Quote => "",
        }
    }

    fn reopen(self) -> &'static str {
        match self {
            Open::Inline => "`",
            Open::Block => "```",
            Open::Quote => ">",
            Open::None => "",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SpanKind {
    Block,
    Inline,
    Atom,
}

/// Code blocks, code spans, and `<…>` / `&…;` atoms, as byte ranges.
fn spans(text: &str) -> Vec<(usize, usize, SpanKind)> {
    let bytes = text.as_bytes();
    let mut spans = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        let rest = &text[i..];
        if rest.starts_with("```") {
            if let Some(end) = text[i + 3..].find("```") {
                let end = i + 3 + end + 3;
                spans.push((i, end, SpanKind::Block));
                atoms_in(text, i + 3, end - 3, &mut spans);
                i = end;
                continue;
            }
            i += 3;
            continue;
        }
        match bytes[i] {
            b'`' => {
                let line_end = text[i + 1..].find('\n').map_or(bytes.len(), |n| i + 1 + n);
                if let Some(close) = text[i + 1..line_end].find('`') {
                    let end = i + 1 + close + 1;
                    spans.push((i, end, SpanKind::Inline));
                    i = end;
                    continue;
                }
            }
            b'<' | b'&' => {
                if let Some(end) = atom_end(text, i) {
                    spans.push((i, end, SpanKind::Atom));
                    i = end;
                    continue;
                }
            }
            _ => {}
        }
        i += rest.chars().next().map_or(1, char::len_utf8);
    }
    spans
}

/// Entities inside a code block (mentions do not render there, but `&amp;` still is one).
fn atoms_in(text: &str, from: usize, to: usize, spans: &mut Vec<(usize, usize, SpanKind)>) {
    let mut i = from;
    while i < to {
        if text.as_bytes()[i] == b'&'
            && let Some(end) = atom_end(text, i).filter(|e| *e <= to)
        {
            spans.push((i, end, SpanKind::Atom));
            i = end;
            continue;
        }
        i += text[i..].chars().next().map_or(1, char::len_utf8);
    }
}

/// The end of `<…>` (on one line, not too long) or `&name;` starting at `i`.
fn atom_end(text: &str, i: usize) -> Option<usize> {
    let bytes = text.as_bytes();
    let is_link = bytes[i] == b'<';
    let longest = if is_link { 1_000 } else { 12 };
    let mut j = i + 1;
    while j < bytes.len() && j - i <= longest {
        match bytes[j] {
            b'>' if is_link => return Some(j + 1),
            b'\n' | b'<' if is_link => return None,
            _ if is_link => j += 1,
            b';' => return (j > i + 1).then_some(j + 1),
            b'#' | b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' => j += 1,
            _ => return None,
        }
    }
    None
}

/// Every char boundary of `text` with how good a cut it is and what it leaves open.
/// `in_code`: the whole text is the content of one code block.
fn cuts(text: &str, in_code: bool) -> Vec<(usize, Cut, Open)> {
    // Per byte position: the best cut allowed there, and what a cut there leaves open.
    let mut cap = vec![Cut::Line; text.len() + 1];
    let mut open_at = vec![if in_code { Open::Block } else { Open::None }; text.len() + 1];
    let mut spans = Vec::new();
    if in_code {
        atoms_in(text, 0, text.len(), &mut spans);
    } else {
        spans = self::spans(text);
    }
    for &(start, end, kind) in &spans {
        for i in start + 1..end {
            match kind {
                SpanKind::Atom => cap[i] = cap[i].min(Cut::Hard),
                SpanKind::Inline if i == start + 1 || i == end - 1 => cap[i] = Cut::Never,
                SpanKind::Inline => {
                    cap[i] = cap[i].min(Cut::Hard);
                    open_at[i] = Open::Inline;
                }
                SpanKind::Block if i <= start + 3 || i >= end - 3 => cap[i] = Cut::Never,
                SpanKind::Block => open_at[i] = Open::Block,
            }
        }
    }
    for (i, g) in text.grapheme_indices(true) {
        for (j, _) in g.char_indices().skip(1) {
            cap[i + j] = cap[i + j].min(Cut::Split);
        }
    }
    let mut out = Vec::with_capacity(text.len() + 1);
    let mut line_is_quote = text.starts_with('>');
    let mut previous: Option<char> = None;
    for (i, c) in text
        .char_indices()
        .chain(std::iter::once((text.len(), '\0')))
    {
        if previous == Some('\n') {
            line_is_quote = text[i..].starts_with('>');
        }
        let kind = match previous {
            None => Cut::Never,
            Some('\n') => Cut::Line,
            Some(' ') | Some('\t') => Cut::Space,
            Some(_) => Cut::Char,
        };
        let mut open = open_at[i];
        if open == Open::None && line_is_quote && kind != Cut::Line {
            open = Open::Quote;
        }
        if i == text.len() {
            out.push((i, Cut::Line, Open::None));
        } else {
            out.push((i, kind.min(cap[i]), open));
        }
        previous = Some(c);
    }
    out
}

/// Splits `text` into pieces of at most `max` units (see the module docs for where it cuts).
/// `in_code`: `text` is the content of a code block; every piece is then wrapped in
/// ```` ``` ````. Returns the pieces and whether a line had to be cut (not only split at line
/// breaks).
fn split(text: &str, max: usize, in_code: bool) -> (Vec<String>, bool) {
    assert!(max >= 16, "a limit below 16 leaves no room to split");
    let cuts = cuts(text, in_code);
    // Units before each cut position.
    let mut units = Vec::with_capacity(cuts.len());
    let mut total = 0;
    let mut previous = 0;
    for &(i, _, _) in &cuts {
        total += len(&text[previous..i]);
        units.push(total);
        previous = i;
    }
    let mut pieces = Vec::new();
    let mut cut_a_line = false;
    let mut start = 0usize; // index into cuts
    let mut reopen = if in_code { Open::Block } else { Open::None };
    let last = cuts.len() - 1;
    while start < last {
        let head = reopen.reopen();
        let room = max - len(head);
        let end_units = units[last] - units[start];
        let (end, open) =
            if end_units + len(Open::Block.close()) <= room || (!in_code && end_units <= room) {
                (last, if in_code { Open::Block } else { Open::None })
            } else {
                // The furthest cut that fits with its closing marker, then the best kind of cut.
                let reach = (start + 1..=last)
                    .take_while(|&k| units[k] - units[start] + 3 <= room)
                    .last()
                    .unwrap_or(start + 1);
                let best = (start + 1..=reach)
                    .filter(|&k| cuts[k].1 > Cut::Never)
                    .max_by_key(|&k| (cuts[k].1, k))
                    .unwrap_or(reach);
                if cuts[best].1 < Cut::Line {
                    cut_a_line = true;
                }
                (best, cuts[best].2)
            };
        let mut body = &text[cuts[start].0..cuts[end].0];
        if cuts[end].1 == Cut::Line {
            body = body.strip_suffix('\n').unwrap_or(body);
        }
        let open = if end == last && in_code {
            Open::Block
        } else {
            open
        };
        let shown = if in_code {
            !body.is_empty()
        } else {
            !body.trim().is_empty()
        };
        if shown {
            pieces.push(format!("{head}{body}{}", open.close()));
        }
        reopen = open;
        start = end;
    }
    (pieces, cut_a_line)
}

/// `text` as section texts of at most [`SECTION_TEXT`] units each.
pub fn split_mrkdwn(text: &str, max: usize) -> Vec<String> {
    split(text, max, false).0
}

/// Code shown in full as ```` ``` ```` pieces of at most `max` units each. `code` is already
/// escaped. The flag says whether a line longer than a piece had to be cut: the reader must then
/// join two pieces without a line break.
pub fn code_pieces(code: &str, max: usize) -> (Vec<String>, bool) {
    if code.is_empty() {
        return (Vec::new(), false);
    }
    split(code, max, true)
}

/// `text` shortened to at most `max` units, with "…" where it was cut; never cut inside a span.
pub fn truncate_mrkdwn(text: &str, max: usize) -> String {
    if len(text) <= max {
        return text.to_owned();
    }
    let first = split(text, max - 1, false)
        .0
        .into_iter()
        .next()
        .unwrap_or_default();
    format!("{first}…")
}

/// Plain text shortened to at most `max` units, cut between graphemes, with "…".
pub fn truncate_plain(text: &str, max: usize) -> String {
    if len(text) <= max {
        return text.to_owned();
    }
    let mut out = String::new();
    let mut used = 0;
    for g in text.graphemes(true) {
        let n = len(g);
        if used + n + 1 > max {
            break;
        }
        out.push_str(g);
        used += n;
    }
    if out.is_empty() {
        // One grapheme longer than the limit: cut between its chars.
        for c in text.chars() {
            if used + c.len_utf16() + 1 > max {
                break;
            }
            out.push(c);
            used += c.len_utf16();
        }
    }
    out.push('…');
    out
}

/// A `plain_text` object within `max` units; never empty.
pub fn plain(text: &str, max: usize) -> Value {
    let text = if text.trim().is_empty() { "-" } else { text };
    json!({"type": "plain_text", "text": truncate_plain(text, max), "emoji": true})
}

/// Sections showing all of `mrkdwn`, each within [`SECTION_TEXT`].
pub fn sections(mrkdwn: &str) -> Vec<Value> {
    split_mrkdwn(mrkdwn, SECTION_TEXT)
        .into_iter()
        .map(section_block)
        .collect()
}

fn section_block(text: String) -> Value {
    json!({"type": "section", "text": {"type": "mrkdwn", "text": text}})
}

/// One section of `mrkdwn`, shortened with "…" if it is longer than a section holds.
pub fn section(mrkdwn: &str) -> Value {
    section_block(nonempty(truncate_mrkdwn(mrkdwn, SECTION_TEXT)))
}

/// A context block of one mrkdwn element, shortened to fit.
pub fn context(mrkdwn: &str) -> Value {
    json!({"type": "context", "elements": [{
        "type": "mrkdwn",
        "text": nonempty(truncate_mrkdwn(mrkdwn, CONTEXT_TEXT)),
    }]})
}

fn nonempty(text: String) -> String {
    if text.trim().is_empty() {
        "-".into()
    } else {
        text
    }
}

/// A message's fallback `text`: within [`MESSAGE_TEXT`], never cut inside a span.
pub fn fallback(text: &str) -> String {
    truncate_mrkdwn(text, MESSAGE_TEXT)
}

/// Keeps `blocks` within a message's [`MESSAGE_BLOCKS`]: the trailing `keep_last` blocks (the
/// buttons) stay, and blocks before them give way to a note saying how many were left out.
pub fn fit_message(blocks: Vec<Value>, keep_last: usize) -> Vec<Value> {
    fit(blocks, keep_last, MESSAGE_BLOCKS)
}

/// [`fit_message`] for a modal or App Home view ([`VIEW_BLOCKS`]).
pub fn fit_view(blocks: Vec<Value>, keep_last: usize) -> Vec<Value> {
    fit(blocks, keep_last, VIEW_BLOCKS)
}

fn fit(mut blocks: Vec<Value>, keep_last: usize, max: usize) -> Vec<Value> {
    if blocks.len() <= max {
        return blocks;
    }
    let keep_last = keep_last.min(max - 1);
    let tail = blocks.split_off(blocks.len() - keep_last);
    let shown = max - 1 - keep_last;
    let left_out = blocks.len() - shown;
    blocks.truncate(shown);
    blocks.push(context(&format!(
        "… {left_out} more block{} not shown: Slack shows at most {max} in one place.",
        if left_out == 1 { "" } else { "s" }
    )));
    blocks.extend(tail);
    blocks
}

/// The line that closes a capped list.
pub fn more_line(left_out: usize, hint: &str) -> String {
    format!("… and {left_out} more ({hint})")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pointers(found: &[Violation]) -> Vec<&str> {
        found.iter().map(|v| v.pointer.as_str()).collect()
    }

    #[test]
    fn synchronous_replies_are_held_to_slacks_limits() {
        let divider = json!({"type": "divider"});
        let fine = json!({"response_type": "ephemeral", "text": "x", "blocks": [divider]});
        assert!(check_reply(&fine).is_empty());
        assert!(check_reply(&Value::Null).is_empty());
        assert!(check_reply(&json!({"response_action": "clear"})).is_empty());
        assert!(
            check_reply(&json!({"response_action": "errors", "errors": {"b": "bad"}})).is_empty()
        );

        let many = json!({"response_type": "ephemeral", "text": "x",
            "blocks": vec![divider.clone(); MESSAGE_BLOCKS + 1]});
        assert_eq!(pointers(&check_reply(&many)), ["/blocks"]);
        let long = json!({"text": "x".repeat(MESSAGE_TEXT + 1)});
        assert_eq!(pointers(&check_reply(&long)), ["/text"]);
        assert_eq!(
            pointers(&check_reply(&json!("x".repeat(MESSAGE_TEXT + 1)))),
            ["/text"]
        );
        assert_eq!(
            pointers(&check_reply(&json!({"response_type": "loud", "text": "x"}))),
            ["/response_type"]
        );
        assert_eq!(
            pointers(&check_reply(&json!({"response_type": "ephemeral"}))),
            [""]
        );
        let view = json!({"response_action": "update", "view": {
            "type": "modal", "title": {"type": "plain_text", "text": "t"},
            "blocks": vec![divider; VIEW_BLOCKS + 1]}});
        assert_eq!(pointers(&check_reply(&view)), ["/view/blocks"]);
        assert_eq!(
            pointers(&check_reply(&json!({"response_action": "push"}))),
            ["/view"]
        );
        assert_eq!(
            pointers(&check_reply(
                &json!({"response_action": "errors", "errors": {}})
            )),
            ["/errors"]
        );
        assert_eq!(
            pointers(&check_reply(
                &json!({"response_action": "errors", "errors": {"b": ""}})
            )),
            ["/errors/b"]
        );
        assert_eq!(
            pointers(&check_reply(&json!({"response_action": "close"}))),
            ["/response_action"]
        );
        assert_eq!(pointers(&check_reply(&json!([1]))), [""]);
    }

    fn joined_code(pieces: &[String]) -> String {
        pieces
            .iter()
            .map(|p| {
                p.strip_prefix("```")
                    .and_then(|p| p.strip_suffix("```"))
                    .unwrap()
            })
            .collect::<Vec<_>>()
            .join("\n")
    }

    #[test]
    fn short_text_is_one_piece() {
        assert_eq!(split_mrkdwn("hello\nworld", 3000), ["hello\nworld"]);
        assert!(split_mrkdwn("", 3000).is_empty());
    }

    #[test]
    fn long_text_splits_at_lines() {
        let line = "x".repeat(40);
        let text = vec![line.clone(); 100].join("\n");
        let pieces = split_mrkdwn(&text, 100);
        assert!(pieces.iter().all(|p| len(p) <= 100), "{pieces:?}");
        assert!(pieces.iter().all(|p| p.split('\n').all(|l| l == line)));
        assert_eq!(pieces.join("\n"), text);
    }

    #[test]
    fn never_inside_spans() {
        let item = "• *#12* `aws-prod-readonly` for 2 hours · <!date^1795442580^{date_short_pretty} {time}|2026-11-23 14:03 UTC> &amp; <@U0ALICE>";
        let text = vec![item; 60].join(" ");
        for max in [90, 97, 200, 3000] {
            for piece in split_mrkdwn(&text, max) {
                assert!(len(&piece) <= max);
                assert_eq!(piece.matches('`').count() % 2, 0, "{piece}");
                assert_eq!(
                    piece.matches('<').count(),
                    piece.matches('>').count(),
                    "{piece}"
                );
                assert!(!piece.ends_with("&amp"), "{piece}");
                assert!(!piece.starts_with("amp;"), "{piece}");
            }
        }
    }

    #[test]
    fn quotes_continue_as_quotes() {
        let text = format!(">{}", "word ".repeat(100));
        let pieces = split_mrkdwn(&text, 60);
        assert!(pieces.len() > 5);
        assert!(pieces.iter().all(|p| p.starts_with('>')), "{pieces:?}");
    }

    #[test]
    fn code_blocks_close_and_reopen() {
        let code: String = (0..300).map(|i| format!("line {i} &amp; more\n")).collect();
        let text = format!("intro\n```{code}```\noutro");
        let pieces = split_mrkdwn(&text, 500);
        assert!(pieces.len() > 3);
        for piece in &pieces {
            assert!(len(piece) <= 500);
            assert_eq!(piece.matches("```").count() % 2, 0, "{piece}");
        }
        let (pieces, cut) = code_pieces(code.trim_end(), 500);
        assert!(!cut);
        assert_eq!(joined_code(&pieces), code.trim_end());
    }

    #[test]
    fn code_longer_than_a_line_is_cut_and_says_so() {
        let token = "A".repeat(7000);
        let (pieces, cut) = code_pieces(&token, SECTION_TEXT);
        assert!(cut);
        assert_eq!(pieces.len(), 3);
        assert!(pieces.iter().all(|p| len(p) <= SECTION_TEXT));
        assert_eq!(joined_code(&pieces).replace('\n', ""), token);
    }

    #[test]
    fn graphemes_are_kept_whole() {
        let family = "👨‍👩‍👧‍👦";
        let text = format!("{}{}", "e\u{301}".repeat(30), family.repeat(30));
        for piece in split_mrkdwn(&text, 40) {
            assert!(len(&piece) <= 40);
            assert!(!piece.starts_with('\u{301}'));
            assert!(!piece.starts_with('\u{200d}'));
        }
        assert_eq!(
            truncate_plain(&"e\u{301}".repeat(50), 10),
            format!("{}…", "e\u{301}".repeat(4))
        );
        // One grapheme longer than the limit still gets cut.
        let zalgo = format!("a{}", "\u{301}".repeat(100));
        assert!(len(&truncate_plain(&zalgo, 20)) <= 20);
        for piece in split_mrkdwn(&zalgo.repeat(3), 40) {
            assert!(len(&piece) <= 40);
        }
    }

    #[test]
    fn truncation_marks_the_cut() {
        assert_eq!(truncate_mrkdwn("short", 10), "short");
        let cut = truncate_mrkdwn(&format!("`{}` tail", "c".repeat(20)), 18);
        assert!(len(&cut) <= 18);
        assert!(cut.ends_with('…'));
        assert_eq!(cut.matches('`').count() % 2, 0, "{cut}");
        assert_eq!(plain("", 24)["text"], "-");
    }

    #[test]
    fn fitting_keeps_the_buttons_and_counts_the_rest() {
        let blocks: Vec<Value> = (0..60).map(|i| section(&format!("item {i}"))).collect();
        let mut with_buttons = blocks.clone();
        with_buttons.push(json!({"type": "actions", "elements": [{"type": "button", "action_id": "a", "text": plain("A", 75), "value": "1"}]}));
        let fitted = fit_message(with_buttons, 1);
        assert_eq!(fitted.len(), MESSAGE_BLOCKS);
        assert_eq!(fitted.last().unwrap()["type"], "actions");
        assert!(
            fitted[MESSAGE_BLOCKS - 2]["elements"][0]["text"]
                .as_str()
                .unwrap()
                .starts_with("… 12 more blocks")
        );
        assert!(check_message(Some("x"), Some(&Value::Array(fitted))).is_empty());
    }

    #[test]
    fn a_datetimepicker_is_held_to_slacks_shape() {
        let view = |element: Value| {
            json!({"type": "modal", "title": plain("T", 24), "submit": plain("Go", 24), "blocks": [
                {"type": "input", "block_id": "start", "optional": true, "label": plain("Start", 2000),
                 "element": element}]})
        };
        let ok = view(json!({"type": "datetimepicker", "action_id": "start_datetime"}));
        assert!(check_view(&ok).is_empty(), "{:?}", check_view(&ok));
        let initial = view(
            json!({"type": "datetimepicker", "action_id": "d", "initial_date_time": 1795442580}),
        );
        assert!(check_view(&initial).is_empty());
        let found: Vec<String> =
            check_view(&view(json!({"type": "datetimepicker", "action_id": "d",
            "initial_date_time": "1795442580", "placeholder": plain("When", 150)})))
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(
            found,
            [
                "[ERROR] is not a property of a datetimepicker [json-pointer:/view/blocks/0/element/placeholder]",
                "[ERROR] must be a unix timestamp in seconds (an integer) [json-pointer:/view/blocks/0/element/initial_date_time]",
            ]
        );
    }

    #[test]
    fn the_validator_names_the_place() {
        let blocks = json!([
            {"type": "section", "text": {"type": "mrkdwn", "text": "a".repeat(3001)}},
            {"type": "header", "text": {"type": "plain_text", "text": "h".repeat(151)}},
            {"type": "actions", "elements": [{"type": "static_select", "action_id": "s",
                "options": [{"text": {"type": "plain_text", "text": "o".repeat(76)}, "value": "v"}]}]},
        ]);
        let found: Vec<String> = check_message(Some("ok"), Some(&blocks))
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(
            found,
            [
                "[ERROR] must be less than 3001 characters [json-pointer:/blocks/0/text/text]",
                "[ERROR] must be less than 151 characters [json-pointer:/blocks/1/text/text]",
                "[ERROR] must be less than 76 characters [json-pointer:/blocks/2/elements/0/options/0/text/text]",
            ]
        );
        let too_many = Value::Array(vec![json!({"type": "divider"}); 51]);
        assert_eq!(
            check_message(None, Some(&too_many))[0].to_string(),
            "[ERROR] must be less than 51 items [json-pointer:/blocks]"
        );
        let view = json!({"type": "modal", "title": plain("A title that is too long!", 100),
        "private_metadata": "m".repeat(3001), "blocks": [
            {"type": "input", "label": plain("L", 10), "element": {"type": "plain_text_input", "action_id": "x"}}
        ]});
        let found: Vec<String> = check_view(&view)
            .iter()
            .map(|v| v.pointer.clone())
            .collect();
        assert_eq!(
            found,
            ["/view/title/text", "/view/submit", "/view/private_metadata"]
        );
        let emoji = "😀".repeat(1501);
        assert_eq!(len(&emoji), 3002);
        assert_eq!(
            check_message(None, Some(&json!([section_block(emoji)]))).len(),
            1
        );
    }
}
