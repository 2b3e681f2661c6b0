// Package vectors loads the envelope-v1 test vectors (the repository's copy,
// testdata/envelope-v1.json) and compares records with their expectations,
// so every test that runs the vectors reads them and judges them the same way.
//
// Load finds the file from any package's tests by walking up from the
// working directory to the module root (the directory holding go.mod): no
// test counts "../" segments. It checks the file before handing it out: the
// spec name, keys with 32-byte DEKs and known states, cases that expect a
// record, name a reason, or expect a duplicate (amendment 1: an exact
// repeat). The copy published for device makers (docs/vectors/) must be
// the same bytes: TestPublishedCopy fails when the two drift.
//
// Diff and CheckRecord apply the file's notes: every expected member other
// than data/data_text must be in the record with that value (others may be
// there too); "data" must equal the record's data as a JSON value;
// "data_text" must be the record's data as text, insignificant whitespace
// aside, so numbers keep their exact text. They work on record JSON bytes
// (what decrypt.Record.AppendJSON writes, or a file sink's line), not on
// decrypt's types: package decrypt's own tests import this package, so it
// must not import decrypt.
//
// The vector keys are public test values, not secrets; Key.DEK still hands
// out a fresh copy so a caller may wipe it as it would a real key.
package vectors
