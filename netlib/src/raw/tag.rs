//! One codec for io_uring user data: every operation a raw shell submits carries a [`Tag`]
//! naming what it is for (its kind), which connection (or listener, or watched descriptor) it
//! belongs to, and a slot (e.g. which pull copy). Tag 0 never decodes, so an operation pushed
//! without a tag is reported, never misrouted.
//!
//! Layout of the `u64`: bits 0–7 the kind (never 0), bits 8–39 the connection, bits 40–63 the
//! slot.

/// What an operation is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TagKind {
    /// Accept on listener `conn`.
    Accept = 1,
    /// A read on connection `conn`.
    Read = 2,
    /// A write on connection `conn`.
    Write = 3,
    /// The waker's eventfd became readable.
    Wake = 4,
    /// The retry timer expired.
    Timer = 5,
    /// Pull copy `slot` of connection `conn`.
    Copy = 6,
    /// Watched descriptor `conn` became readable.
    Watch = 7,
}

impl TagKind {
    fn from_u8(b: u8) -> Option<TagKind> {
        Some(match b {
            1 => TagKind::Accept,
            2 => TagKind::Read,
            3 => TagKind::Write,
            4 => TagKind::Wake,
            5 => TagKind::Timer,
            6 => TagKind::Copy,
            7 => TagKind::Watch,
            _ => return None,
        })
    }
}

/// The user data of one operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Tag {
    /// What it is for.
    pub kind: TagKind,
    /// Connection, listener index or watch id.
    pub conn: u32,
    /// Slot within the connection (at most [`Tag::MAX_SLOT`]).
    pub slot: u32,
}

impl Tag {
    /// Largest slot a tag holds (24 bits).
    pub const MAX_SLOT: u32 = (1 << 24) - 1;

    /// A tag without a slot.
    pub fn new(kind: TagKind, conn: u32) -> Tag {
        Tag {
            kind,
            conn,
            slot: 0,
        }
    }

    /// A tag with a slot (masked to [`Tag::MAX_SLOT`]).
    pub fn with_slot(kind: TagKind, conn: u32, slot: u32) -> Tag {
        Tag {
            kind,
            conn,
            slot: slot & Tag::MAX_SLOT,
        }
    }

    /// The user data.
    pub fn encode(self) -> u64 {
        (u64::from(self.slot & Tag::MAX_SLOT) << 40)
            | (u64::from(self.conn) << 8)
            | self.kind as u64
    }

    /// The tag of some user data; None for data no tag encodes (e.g. 0).
    pub fn decode(v: u64) -> Option<Tag> {
        Some(Tag {
            kind: TagKind::from_u8((v & 0xff) as u8)?,
            conn: ((v >> 8) & 0xffff_ffff) as u32,
            slot: (v >> 40) as u32,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tags_round_trip_and_zero_is_no_tag() {
        for kind in [
            TagKind::Accept,
            TagKind::Read,
            TagKind::Write,
            TagKind::Wake,
            TagKind::Timer,
            TagKind::Copy,
            TagKind::Watch,
        ] {
            for (conn, slot) in [(0, 0), (1, 1), (u32::MAX, Tag::MAX_SLOT), (77, 12345)] {
                let t = Tag::with_slot(kind, conn, slot);
                assert_eq!(Tag::decode(t.encode()), Some(t));
            }
        }
        assert_eq!(Tag::decode(0), None);
        assert_eq!(Tag::decode(0xff), None);
        assert_eq!(
            Tag::with_slot(TagKind::Copy, 1, u32::MAX).slot,
            Tag::MAX_SLOT
        );
    }
}
