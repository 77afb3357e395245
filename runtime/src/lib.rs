//! spate-runtime: thread-per-core execution with one io_uring per thread, registered buffer
//! arenas in hugepage memory, and the memlock / opcode checks they need. See DESIGN.md §5.
