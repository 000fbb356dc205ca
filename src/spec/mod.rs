//! What a generation is asked for, as plain values: Ollama's options as typed patches and the
//! settings they resolve to (`options`), and chat and request templates (`template`).
//!
//! The bottom layer: no llama.cpp, no I/O, nothing of hearth's above it. The store checks a
//! Modelfile's parameters and template with it, the engine renders and samples with it, and the
//! edges (API, config) parse into it.

pub mod options;
pub mod template;
