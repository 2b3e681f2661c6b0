// Package recordfile reads what a file sink wrote, for end-to-end tests
// that count deliveries by record id: the ids in file order and the lines
// that are no record (at most one per killed writer: the line it was
// writing when it died). A missing file reads as empty, since a sink
// creates its file at its first record. It reads only; it never parses
// more of a record than its id.
package recordfile
