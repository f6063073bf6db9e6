//! The job's terminal control sequences on their way to the operator's terminal: shown,
//! not obeyed, except colours.
//!
//! A job's output shares stdout with the agent's own lines, and a terminal obeys what it
//! is sent: an unterminated title sequence (`ESC ] 0 ;`) swallowed the agent's next line,
//! and cursor movement can rewrite earlier ones (found by an attack run). So:
//!
//! - SGR sequences (`ESC [` digits, `;` or `:`, then `m`: colours and text styles) pass,
//!   so that tools forced to colour their output (`CARGO_TERM_COLOR=always`) still do.
//!   They cannot move the cursor; they can make text invisible (black on black,
//!   "conceal"), so [`ControlFilter::take_styled`] tells the writer to reset the style
//!   before the agent's next line.
//! - Every other ESC becomes the visible `^[` (the rest of its sequence stays as text),
//!   and so does every other control character but tab, newline, carriage return and
//!   backspace, in caret notation (shift-out, `^N`, would switch a console's character
//!   set for the agent's lines that follow).
//! - A C1 control character (U+0080 to U+009F in UTF-8), which some terminals take as ESC
//!   plus a letter (U+009B is CSI), becomes U+FFFD. A lone byte 0x9B is left alone: it is
//!   not UTF-8, and only a terminal in an 8-bit mode obeys it.
//!
//! Without ESC a job moves the cursor only within its own line (`\r`, backspace), and
//! the writer ends that line before the agent writes.
//!
//! Sequences may be split across reads of the output pipe: what could still become an
//! SGR is held back (at most [`MAX_SGR`] bytes), and released as text once it cannot.

/// The longest SGR passed on; a longer one is shown as text.
pub const MAX_SGR: usize = 64;

/// What the filter is in the middle of.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
enum State {
    #[default]
    Text,
    /// After 0xC2, the first byte of a C1 character's UTF-8.
    C2,
    /// After ESC.
    Esc,
    /// After `ESC [`, in the parameters (held back in `held`).
    Csi,
}

/// See the module documentation.
#[derive(Debug, Default)]
pub struct ControlFilter {
    state: State,
    /// The sequence being read (`ESC [` and its parameters so far).
    held: Vec<u8>,
    /// Whether an SGR was passed since the last [`ControlFilter::take_styled`].
    styled: bool,
}

impl ControlFilter {
    /// `input` as it may be shown, as far as it can be decided yet.
    pub fn push(&mut self, input: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(input.len());
        for &byte in input {
            self.step(byte, &mut out);
        }
        out
    }

    /// Whatever is held back, as text: call at the end of the stream.
    pub fn finish(&mut self) -> Vec<u8> {
        let mut out = Vec::new();
        self.release(&mut out);
        out
    }

    /// Whether the job's output may have left a colour or style set (an SGR passed since
    /// the last call): then the agent resets it before writing.
    pub fn take_styled(&mut self) -> bool {
        std::mem::take(&mut self.styled)
    }

    fn step(&mut self, byte: u8, out: &mut Vec<u8>) {
        match self.state {
            State::Text => self.text(byte, out),
            State::C2 => {
                self.state = State::Text;
                if (0x80..=0x9f).contains(&byte) {
                    out.extend_from_slice("\u{fffd}".as_bytes());
                } else {
                    out.push(0xc2);
                    self.text(byte, out);
                }
            }
            State::Esc if byte == b'[' => {
                self.state = State::Csi;
                self.held.extend_from_slice(b"\x1b[");
            }
            State::Esc => {
                self.release(out);
                self.text(byte, out);
            }
            State::Csi => match byte {
                b'0'..=b'9' | b';' | b':' if self.held.len() < MAX_SGR => self.held.push(byte),
                b'm' => {
                    out.append(&mut self.held);
                    out.push(b'm');
                    self.state = State::Text;
                    self.styled = true;
                }
                _ => {
                    self.release(out);
                    self.text(byte, out);
                }
            },
        }
    }

    fn text(&mut self, byte: u8, out: &mut Vec<u8>) {
        match byte {
            0x1b => self.state = State::Esc,
            0xc2 => self.state = State::C2,
            // Tab, newline, carriage return and backspace act within the job's own lines.
            b'\t' | b'\n' | b'\r' | 0x08 => out.push(byte),
            // Every other control character is shown in caret notation: shift-out (^N)
            // would leave a console drawing the agent's lines in line-graphics glyphs
            // (found by an attack run), and none of them is text.
            0x00..=0x1f => out.extend_from_slice(&[b'^', byte + 0x40]),
            0x7f => out.extend_from_slice(b"^?"),
            _ => out.push(byte),
        }
    }

    /// Writes what is held back as text (an ESC as `^[`) and returns to text.
    fn release(&mut self, out: &mut Vec<u8>) {
        match std::mem::take(&mut self.state) {
            State::Text => {}
            State::C2 => out.push(0xc2),
            State::Esc => out.extend_from_slice(b"^["),
            State::Csi => {
                out.extend_from_slice(b"^[");
                out.extend_from_slice(&self.held[1..]);
            }
        }
        self.held.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What `chunks` become, pushed one by one, then finished.
    fn shown(chunks: &[&[u8]]) -> Vec<u8> {
        let mut filter = ControlFilter::default();
        let mut out = Vec::new();
        for chunk in chunks {
            out.extend(filter.push(chunk));
        }
        out.extend(filter.finish());
        out
    }

    #[test]
    fn sequences_other_than_colours_are_shown_not_obeyed() {
        assert_eq!(shown(&[b"a\x1b]0;title"]), b"a^[]0;title");
        assert_eq!(shown(&[b"\x1b[1A\x1b[2K"]), b"^[[1A^[[2K");
        assert_eq!(shown(&[b"\x1bc\x1b7\x1b[?25l"]), b"^[c^[7^[[?25l");
        // An ESC at the very end, and one right after another.
        assert_eq!(shown(&[b"x\x1b"]), b"x^[");
        assert_eq!(shown(&[b"\x1b\x1b[31m"]), b"^[\x1b[31m");
    }

    #[test]
    fn colours_pass_even_split_across_reads() {
        assert_eq!(shown(&[b"\x1b[1;31mred\x1b[0m"]), b"\x1b[1;31mred\x1b[0m");
        assert_eq!(shown(&[b"\x1b", b"[3", b"8:5:1m!"]), b"\x1b[38:5:1m!");
        // Too long to be a colour: text.
        let long = format!("\x1b[{}m", "1;".repeat(40));
        assert_eq!(
            shown(&[long.as_bytes()]),
            format!("^[[{}m", "1;".repeat(40)).as_bytes()
        );
        // Cut off by the end of the stream: text.
        assert_eq!(shown(&[b"\x1b[31"]), b"^[[31");
    }

    #[test]
    fn a_colour_asks_for_a_reset() {
        let mut filter = ControlFilter::default();
        filter.push(b"plain\x1b[2A");
        assert!(!filter.take_styled());
        filter.push(b"\x1b[30;40mhidden");
        assert!(filter.take_styled());
        assert!(!filter.take_styled(), "taken once");
    }

    #[test]
    fn c1_controls_become_replacement_characters() {
        assert_eq!(
            shown(&[b"x\xc2", b"\x9b2J", b"\xc2\x9b"]),
            "x\u{fffd}2J\u{fffd}".as_bytes()
        );
        // Other characters starting with 0xC2 pass, split or not, and at the end.
        assert_eq!(shown(&[b"\xc2", b"\xa9 \xc2\xb5"]), "© µ".as_bytes());
        assert_eq!(shown(&[b"end\xc2"]), b"end\xc2");
        // Other control characters are shown in caret notation.
        assert_eq!(shown(&[b"a\x0eb\x0fc\x07\x0c\x00\x7f"]), b"a^Nb^Oc^G^L^@^?");
        // Tabs, carriage returns (progress bars), backspaces and other UTF-8 pass.
        assert_eq!(
            shown(&[b"\t10%\r20%\x08\n\xe2\x82\xac"]),
            "\t10%\r20%\x08\n€".as_bytes()
        );
    }
}
