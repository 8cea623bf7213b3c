//! Backups: a table read partition by partition, each from one point-in-time view.
//!
//! A List page is one linearizable read, so a table listed page by page while it is
//! written mixes moments. An export opens, on a partition's leader and after a read
//! barrier, a view of the engine as of that moment, and reads all of the partition's pages
//! from it; the client carries an opaque cursor naming the node and the view. Different
//! partitions are read at different moments, one after the other.

use crate::router::bounded;
use crate::{PartitionOp, PartitionReply, PartitionRequest, Router, Transport};
use cairn_types::{Epoch, Error, NodeId, PartitionId, Result, TableId};
use tokio::time::Instant;

/// Where a table's export stands.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ExportCursor {
    /// Open a view of the partition that holds `start` (its first key, or the table's).
    Begin {
        /// A key of the table; the partition holding it is read next.
        start: Vec<u8>,
    },
    /// Read on in the view `view` that node `node` holds of `partition`.
    Continue {
        /// The node holding the view.
        node: NodeId,
        /// The partition.
        partition: PartitionId,
        /// Its table.
        table: TableId,
        /// The view.
        view: u64,
        /// Where the partition begins (to start it over in a new view).
        start: Vec<u8>,
        /// The next key to read.
        next: Vec<u8>,
    },
}

const BEGIN: u8 = 1;
const CONTINUE: u8 = 2;

impl ExportCursor {
    /// The cursor that starts an export of a whole table.
    pub fn first() -> Self {
        ExportCursor::Begin { start: Vec::new() }
    }

    /// The keys the cursor holds (to check against the key size limit).
    pub fn keys(&self) -> impl Iterator<Item = &[u8]> {
        let (a, b) = match self {
            ExportCursor::Begin { start } => (start.as_slice(), None),
            ExportCursor::Continue { start, next, .. } => (start.as_slice(), Some(next.as_slice())),
        };
        std::iter::once(a).chain(b)
    }

    /// The cursor as bytes, for a client to hand back unchanged.
    pub fn encode(&self) -> Vec<u8> {
        let mut b = Vec::new();
        match self {
            ExportCursor::Begin { start } => {
                b.push(BEGIN);
                b.extend_from_slice(start);
            }
            ExportCursor::Continue {
                node,
                partition,
                table,
                view,
                start,
                next,
            } => {
                b.push(CONTINUE);
                for n in [node.0, partition.0, table.0, *view, start.len() as u64] {
                    b.extend_from_slice(&n.to_le_bytes());
                }
                b.extend_from_slice(start);
                b.extend_from_slice(next);
            }
        }
        b
    }

    /// A cursor from [`ExportCursor::encode`]; empty bytes start at the table's beginning.
    pub fn decode(b: &[u8]) -> Result<Self> {
        let bad = || {
            Error::InvalidArgument("the export cursor is damaged; pass it back exactly as it was answered, or start over with an empty one".into())
        };
        match b.split_first() {
            None => Ok(Self::first()),
            Some((&BEGIN, start)) => Ok(ExportCursor::Begin {
                start: start.to_vec(),
            }),
            Some((&CONTINUE, rest)) => {
                let mut n = [0u64; 5];
                for (i, v) in n.iter_mut().enumerate() {
                    let w = rest.get(i * 8..i * 8 + 8).ok_or_else(bad)?;
                    *v = u64::from_le_bytes(w.try_into().map_err(|_| bad())?);
                }
                // View 0 would mean "open one" at the node the cursor names.
                if n[3] == 0 {
                    return Err(bad());
                }
                let keys = &rest[40..];
                let split = usize::try_from(n[4])
                    .ok()
                    .filter(|s| *s <= keys.len())
                    .ok_or_else(bad)?;
                Ok(ExportCursor::Continue {
                    node: NodeId(n[0]),
                    partition: PartitionId(n[1]),
                    table: TableId(n[2]),
                    view: n[3],
                    start: keys[..split].to_vec(),
                    next: keys[split..].to_vec(),
                })
            }
            Some(_) => Err(bad()),
        }
    }
}

/// One page of an export.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExportPage {
    /// Rows in key order, values included.
    pub rows: Vec<(Vec<u8>, Vec<u8>)>,
    /// The partition they came from.
    pub partition: PartitionId,
    /// Where to go on; `None` once the table is done.
    pub next: Option<ExportCursor>,
    /// The cursor that reads this page's partition again from a new view, for when its
    /// view is gone (its node restarted, or the view went unread too long).
    pub restart: ExportCursor,
    /// This page is its partition's last (its view is dropped).
    pub partition_done: bool,
}

impl<T: Transport> Router<T> {
    /// Reads the export page at `at` of `table`, ending after about `max_bytes`.
    pub async fn export(
        &self,
        table: &str,
        at: ExportCursor,
        max_bytes: u64,
        deadline: Instant,
    ) -> Result<ExportPage> {
        match at {
            ExportCursor::Begin { start } => {
                let op = || PartitionOp::Export {
                    view: 0,
                    from: start.clone(),
                    max_bytes,
                };
                let served = self.keyed_at(table, &start, op, false, deadline).await?;
                page(
                    served.reply,
                    served.node,
                    served.partition.id,
                    served.partition.table_id,
                    start,
                )
            }
            ExportCursor::Continue {
                node,
                partition,
                table: table_id,
                view,
                start,
                next,
            } => {
                // The caller was allowed to read `table`: the view must be of that table.
                if self.route(table, deadline).await?.table.id != table_id {
                    return Err(Error::InvalidArgument(format!(
                        "the export cursor belongs to another table than {table} (or to one dropped and made again); start the export over with an empty cursor"
                    )));
                }
                let req = PartitionRequest {
                    partition,
                    // A view is read whatever the partition's shape has become since.
                    epoch: Epoch::default(),
                    table: table_id,
                    op: PartitionOp::Export {
                        view,
                        from: next,
                        max_bytes,
                    },
                };
                // Only `node` holds the view: when it cannot be reached twice running
                // (killed, restarted, paused), no other node can serve the page, and retries
                // until the caller's deadline would only delay the read from a new view. It
                // is asked again once, so that one slow answer does not cost the partition's
                // pages read so far.
                let mut asked = 0;
                let reply = loop {
                    asked += 1;
                    match bounded(deadline, self.transport().partition(node, req.clone())).await {
                        Err(Error::Unavailable(_)) if asked < 2 && Instant::now() < deadline => {}
                        Err(Error::Unavailable(why)) => {
                            return Err(Error::NotFound(format!(
                                "the export view of partition {partition} on node {node} cannot be read ({why}); read the partition again from its restart cursor"
                            )));
                        }
                        r => break r?,
                    }
                };
                page(reply, node, partition, table_id, start)
            }
        }
    }
}

/// The page a replica's answer makes, and the cursor after it.
fn page(
    reply: PartitionReply,
    node: NodeId,
    partition: PartitionId,
    table: TableId,
    start: Vec<u8>,
) -> Result<ExportPage> {
    // A partition is read again from where this export of it began, in a new view.
    let restart = ExportCursor::Begin {
        start: start.clone(),
    };
    let PartitionReply::Export {
        view,
        rows,
        next,
        range,
    } = reply
    else {
        return Err(Error::Internal(format!(
            "{partition} answered an export page with {reply:?}"
        )));
    };
    let partition_done = next.is_none();
    let next = match next {
        Some(next) => Some(ExportCursor::Continue {
            node,
            partition,
            table,
            view,
            start,
            next,
        }),
        None => range.end.map(|start| ExportCursor::Begin { start }),
    };
    Ok(ExportPage {
        rows,
        partition,
        next,
        restart,
        partition_done,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_survive_their_encoding() {
        let cursors = [
            ExportCursor::first(),
            ExportCursor::Begin {
                start: b"m\x00\xff".to_vec(),
            },
            ExportCursor::Continue {
                node: NodeId(3),
                partition: PartitionId(77),
                table: TableId(5),
                view: u64::MAX,
                start: b"g".to_vec(),
                next: b"k\x00".to_vec(),
            },
            ExportCursor::Continue {
                node: NodeId(1),
                partition: PartitionId(2),
                table: TableId(3),
                view: 4,
                start: vec![],
                next: vec![],
            },
        ];
        let no_view = ExportCursor::Continue {
            node: NodeId(1),
            partition: PartitionId(2),
            table: TableId(3),
            view: 0,
            start: vec![],
            next: vec![],
        };
        assert!(ExportCursor::decode(&no_view.encode()).is_err());
        for c in cursors {
            assert_eq!(ExportCursor::decode(&c.encode()).ok(), Some(c.clone()));
        }
        assert_eq!(ExportCursor::decode(&[]).ok(), Some(ExportCursor::first()));
    }

    #[test]
    fn a_damaged_cursor_is_refused() {
        let c = ExportCursor::Continue {
            node: NodeId(3),
            partition: PartitionId(77),
            table: TableId(5),
            view: 9,
            start: b"abc".to_vec(),
            next: b"d".to_vec(),
        }
        .encode();
        // Cut inside the numbers, a start longer than the keys, an unknown kind.
        for bad in [&c[..20], &c[..42], &[9u8, 1, 2][..]] {
            assert!(
                matches!(ExportCursor::decode(bad), Err(Error::InvalidArgument(_))),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn the_last_page_of_a_partition_leads_to_the_next_one() {
        let reply = |next: Option<&[u8]>, end: Option<&[u8]>| PartitionReply::Export {
            view: 7,
            rows: vec![(b"h".to_vec(), b"1".to_vec())],
            next: next.map(<[u8]>::to_vec),
            range: cairn_types::KeyRange {
                start: b"g".to_vec(),
                end: end.map(<[u8]>::to_vec),
            },
        };
        let go = |r| page(r, NodeId(2), PartitionId(4), TableId(1), b"g".to_vec());
        let more = go(reply(Some(b"h\x00"), Some(b"p")))
            .ok()
            .and_then(|p| p.next);
        assert_eq!(
            more,
            Some(ExportCursor::Continue {
                node: NodeId(2),
                partition: PartitionId(4),
                table: TableId(1),
                view: 7,
                start: b"g".to_vec(),
                next: b"h\x00".to_vec(),
            })
        );
        let done = go(reply(None, Some(b"p"))).ok().and_then(|p| p.next);
        assert_eq!(
            done,
            Some(ExportCursor::Begin {
                start: b"p".to_vec()
            })
        );
        let last = go(reply(None, None)).ok().map(|p| p.next);
        assert_eq!(last, Some(None));
    }
}
