"""Writes the WordPiece golden vectors crates/cairn-entry/testdata/wordpiece-golden.jsonl: Hugging
Face `tokenizers` (pip install tokenizers==0.22.1, an independent implementation) encoding the
listed texts with bert-base-uncased's vocabulary as the entry reads it (bert_vocab.json from
scripts/bert_vocab.py, turned back into vocab.txt form).
Usage: python wordpiece_golden.py BERT_VOCAB_JSON OUT_JSONL"""
import json, os, sys, tempfile
from tokenizers import BertWordPieceTokenizer

pieces = json.load(open(sys.argv[1], encoding="utf-8"))
lines = [p if p.startswith("[") and p.endswith("]") else (p[1:] or "[unused0]") if p.startswith("▁")
         else "##" + p for p in pieces]
with tempfile.TemporaryDirectory() as d:
    path = os.path.join(d, "vocab.txt")
    open(path, "w", encoding="utf-8").write("\n".join(lines) + "\n")
    tok = BertWordPieceTokenizer(path, lowercase=True, clean_text=True, handle_chinese_chars=True)
    texts = ["i like strawberries", "Hello, World!", "Café crème brûlée", "naïve résumé",
             "The quick brown fox jumps over the lazy dog.", "How do I reset my password?",
             "I can’t sleep — it's 3am!!!", "中文测试 mixed 日本語", "e-mail: john.doe@example.com",
             "$1,234.56 + 7% = ?", "unaffable antidisestablishmentarianism", "ＦＵＬＬＷＩＤＴＨ ｔｅｘｔ",
             "tab\tand\nnewline", "emoji 😀 here", "x" * 120, "Ünïcödé ÀÉÎÕÜ", "don't won't shouldn't",
             "<html><body>hi</body></html>", "C++ and C# and F#", "Ελληνικά και русский"]
    with open(sys.argv[2], "w", encoding="utf-8") as f:
        for t in texts:
            f.write(json.dumps({"text": t, "ids": tok.encode(t).ids}, ensure_ascii=False) + "\n")
