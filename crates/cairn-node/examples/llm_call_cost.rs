//! What a language-model call costs beyond the engine, and what re-executing it costs a
//! verifier, measured side by side in one process on one thread:
//! `cargo run --release -p cairn-node --example llm_call_cost -- MODEL.gguf [MAX_TOKENS] [RUNS]`.
//!
//! Each run: the node's path for a streamed chat completion (request parsed, chat template,
//! generation, every SSE event rendered, the answer and request hashed, the LLM receipt
//! signed), then the bare engine on the same prompt for the same number of tokens (feed, then
//! greedy steps), then the verifier's replay of the receipt. Prints one JSON line per run, then
//! the medians. The node's own work beside the engine is also timed piece by piece (rendering
//! every event of the answer again, hashing request and answer, signing the receipt), which
//! the machine's noise does not drown.

use std::time::Instant;

use alloy_primitives::{B256, U256};
use cairn_node::llm::{self, Endpoint, Identity, LlmRequest};
use cairn_receipt::{Claims, LlmUsage, ReceiptDomain, ReceiptSigner};

fn main() {
    let mut args = std::env::args().skip(1);
    let path = args
        .next()
        .expect("usage: llm_call_cost MODEL.gguf [MAX_TOKENS] [RUNS]");
    let max_tokens: u32 = args.next().map_or(64, |a| a.parse().expect("a count"));
    let runs: usize = args.next().map_or(3, |a| a.parse().expect("a count"));
    let model =
        cairn_llm::Model::load(&std::fs::read(&path).expect("read the model")).expect("load");
    let key = alloy_signer_local::PrivateKeySigner::random();
    let signer = ReceiptSigner::new(
        cairn_core::sig::SigningKey::from_signer(&key),
        ReceiptDomain {
            chain_id: 31337,
            verifying_contract: alloy_primitives::Address::repeat_byte(0x42),
        },
    );
    let body = serde_json::json!({
        "model": "smollm2-135m-instruct@1.0",
        "messages": [
            {"role": "system", "content": "You are a helpful assistant who writes long, detailed answers."},
            {"role": "user", "content": "Tell me the story of a lighthouse keeper who finds a message in a bottle."}
        ],
        "max_tokens": max_tokens,
        "temperature": 0,
        "stream": true,
        "stream_options": {"include_usage": true}
    })
    .to_string()
    .into_bytes();
    let profile = llm::profile();
    let (mut engines, mut nodes, mut replays, mut parts) = (vec![], vec![], vec![], vec![]);
    for run in 1..=runs {
        // The node's path.
        let t = Instant::now();
        let request = LlmRequest::parse(Endpoint::Chat, &body).expect("a valid request");
        let prompt = request.prompt_tokens(&model).expect("a prompt");
        let id = Identity {
            request_id: B256::random(),
            created: 1_800_000_000,
            fingerprint: profile.hash(),
        };
        let mut events = 0usize;
        let g = llm::generate(
            &model,
            &request,
            &prompt,
            llm::context_of(&model),
            &id,
            None,
            |b| {
                events += usize::from(!b.is_empty());
                true
            },
        )
        .expect("generation");
        let claims = Claims {
            request_id: id.request_id,
            model: cairn_core::BlobId::of(b"model"),
            input_hash: llm::sha256(&body),
            output_hash: llm::sha256(&g.transcript),
            profile: profile.clone(),
            timestamp: id.created,
            price: U256::ZERO,
            payment_ref: B256::ZERO,
            llm: Some(LlmUsage {
                prompt_tokens: g.prompt_tokens,
                completion_tokens: g.completion_tokens,
                complete: g.complete,
            }),
        };
        let receipt = signer.sign(claims.clone());
        let node_s = t.elapsed().as_secs_f64();

        // The node's own work, piece by piece: every event rendered again (the same chunk
        // shape and text), the two hashes and the signature.
        // Rendering: each event parsed back into its chunk and serialized again, less the
        // parsing alone.
        let text = String::from_utf8_lossy(&g.transcript).into_owned();
        let events_json: Vec<&str> = text
            .split("\n\n")
            .filter_map(|e| e.strip_prefix("data: "))
            .filter(|e| e.starts_with('{'))
            .collect();
        let parse = || -> Vec<cairn_node_api::openai::ChatCompletionChunk> {
            events_json
                .iter()
                .map(|e| serde_json::from_str(e).expect("a chunk"))
                .collect()
        };
        let t = Instant::now();
        let mut rendered = 0usize;
        for chunk in parse() {
            rendered += std::hint::black_box(serde_json::to_vec(&chunk).expect("serializes")).len();
        }
        let parse_and_render_s = t.elapsed().as_secs_f64();
        let t = Instant::now();
        std::hint::black_box(parse());
        let render_s = (parse_and_render_s - t.elapsed().as_secs_f64()).max(0.0);
        let t = Instant::now();
        std::hint::black_box(llm::sha256(&body));
        std::hint::black_box(llm::sha256(&g.transcript));
        std::hint::black_box(signer.sign(claims));
        let seal_s = t.elapsed().as_secs_f64();

        // The bare engine: the same prompt, the same number of tokens.
        let t = Instant::now();
        let mut session = model.session();
        let mut logits = session.feed(&prompt).expect("feed");
        for _ in 1..g.completion_tokens {
            let next = cairn_llm::argmax(&logits);
            logits = session.step(next).expect("step");
        }
        let _ = cairn_llm::argmax(&logits);
        let engine_s = t.elapsed().as_secs_f64();

        // The verifier's replay.
        let t = Instant::now();
        let replay = llm::replay(&model, &body, &receipt.claims, None);
        let replay_s = t.elapsed().as_secs_f64();
        assert!(
            matches!(replay, llm::Replay::Same { .. }),
            "replay: {replay:?}"
        );
        let own_s = render_s + seal_s;
        println!(
            "{{\"run\": {run}, \"prompt_tokens\": {}, \"completion_tokens\": {}, \"sse_events\": {events}, \"transcript_bytes\": {}, \"rendered_bytes\": {rendered}, \"engine_s\": {engine_s:.4}, \"node_s\": {node_s:.4}, \"replay_s\": {replay_s:.4}, \"render_us\": {:.1}, \"hash_and_sign_us\": {:.1}, \"own_work_pct_of_engine\": {:.3}}}",
            g.prompt_tokens,
            g.completion_tokens,
            g.transcript.len(),
            render_s * 1e6,
            seal_s * 1e6,
            own_s / engine_s * 100.0
        );
        engines.push(engine_s);
        nodes.push(node_s);
        replays.push(replay_s);
        parts.push(own_s / engine_s * 100.0);
    }
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let (e, n, r, p) = (
        median(&mut engines),
        median(&mut nodes),
        median(&mut replays),
        median(&mut parts),
    );
    println!(
        "{{\"medians\": true, \"engine_s\": {e:.4}, \"node_s\": {n:.4}, \"node_over_engine\": {:.3}, \"own_work_pct_of_engine\": {p:.3}, \"replay_over_call\": {:.3}, \"verifier_cpu_at_5pct_sampling_pct\": {:.2}}}",
        n / e,
        r / n,
        5.0 * r / n
    );
}
