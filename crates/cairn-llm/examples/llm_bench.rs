//! Prompt processing and generation speed of cairn-llm at batch 1 on one thread, printed as one
//! JSON line: `cargo run --release -p cairn-llm --example llm_bench -- MODEL.gguf [PROMPT_TOKENS] [GEN_TOKENS] [THREADS]`.
//! `scripts/bench-llm.sh` runs it beside llama.cpp on the same model and prompt.

use std::time::Instant;

use cairn_llm::{Model, Sampling};

fn main() {
    let mut args = std::env::args().skip(1);
    let path = args
        .next()
        .expect("usage: llm_bench MODEL.gguf [PROMPT_TOKENS] [GEN_TOKENS]");
    let prompt_len: usize = args.next().map_or(128, |a| a.parse().expect("a count"));
    let gen_len: usize = args.next().map_or(64, |a| a.parse().expect("a count"));
    let threads: usize = args.next().map_or(1, |a| a.parse().expect("a count"));
    let t = Instant::now();
    let mut model = Model::load(&std::fs::read(&path).expect("read the model")).expect("load");
    model.set_threads(threads).expect("threads");
    let load_s = t.elapsed().as_secs_f64();
    // The same prompt text as the llama.cpp side: a sentence repeated to the length asked for.
    let sentence = model
        .tokenizer
        .encode(" The quick brown fox jumps over the lazy dog and verifies every receipt.");
    let prompt: Vec<u32> = sentence.iter().cycle().take(prompt_len).copied().collect();

    let mut session = model.session();
    let t = Instant::now();
    let logits = session.feed(&prompt).unwrap();
    let prompt_s = t.elapsed().as_secs_f64();
    assert_eq!(logits.len(), model.weights.config.vocab);

    // Generation: greedy, never stopping early, timed per token after the prompt.
    let t = Instant::now();
    let mut sampler = cairn_llm::Sampler::new(Sampling::greedy());
    let mut logits = logits;
    for _ in 0..gen_len {
        let next = sampler.sample(&logits);
        logits = session.step(next).unwrap();
    }
    let gen_s = t.elapsed().as_secs_f64();
    println!(
        "{{\"engine\": \"cairn-llm\", \"threads\": {threads}, \"load_s\": {load_s:.3}, \"prompt_tokens\": {prompt_len}, \"prompt_tok_s\": {:.1}, \"gen_tokens\": {gen_len}, \"gen_tok_s\": {:.1}}}",
        prompt_len as f64 / prompt_s,
        gen_len as f64 / gen_s
    );
}
