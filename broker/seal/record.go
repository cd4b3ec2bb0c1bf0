package seal

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
)

// # Authenticated records
//
// A record whose forgery would grant access or change where tokens go (an
// API key, a provider, a grant, a pending authorization) carries a tag that
// only a holder of the master key can make: SignRecord adds to the record's
// JSON object a member "record_sealed" holding a sealed value (see Seal)
// whose plaintext is the SHA-256 of the record's canonical form, sealed
// with the additional data "<etcd key>#record". A record copied to another
// etcd key, edited, extended with a member, or written by someone without
// the master key does not verify.
//
// The canonical form is the record's members, sorted by name and compacted
// as encoding/json writes them, with the tag left out and each other sealed
// member ("…_sealed") replaced by a marker of its presence: sealed values
// authenticate themselves, and leaving their bytes out keeps the tag valid
// when a master-key rotation re-seals them. The tag is itself a sealed
// value, so the same re-seal moves it to the new key.
//
// What a tag cannot prove is freshness: someone who can write to etcd can
// put back an earlier authentic version of the same record.

// RecordField is the JSON member of an authenticated record that holds its
// tag.
const RecordField = "record" + sealedSuffix

const (
	sealedSuffix     = "_sealed"
	recordAADSuffix  = "#record"
	recordDigestInfo = "tokenbroker/record/v1\x00"
)

// ErrRecord: a record that must be authenticated has no tag, or a tag that
// does not verify.
var ErrRecord = errors.New("seal: record is not authenticated by the master key")

// SignRecord returns record, a JSON object, with a tag that authenticates
// it under etcdKey (any tag it had is replaced). The members are written in
// sorted order. It fails when record is not a JSON object or the random
// source fails.
func (k *Keyring) SignRecord(etcdKey string, record []byte) ([]byte, error) {
	obj, digest, err := recordDigest(record)
	if err != nil {
		return nil, err
	}
	tag, err := k.Seal(etcdKey+recordAADSuffix, digest[:])
	if err != nil {
		return nil, err
	}
	if obj[RecordField], err = json.Marshal(tag); err != nil {
		return nil, err
	}
	return json.Marshal(obj)
}

// VerifyRecord returns nil when record carries a tag made by SignRecord
// under etcdKey with a key of the keyring, for exactly these members. It
// returns an error wrapping ErrRecord otherwise (no tag, a tag for other
// content or another etcd key, a key the keyring does not hold, or a value
// that is not a JSON object); the error names no value.
func (k *Keyring) VerifyRecord(etcdKey string, record []byte) error {
	obj, digest, err := recordDigest(record)
	if err != nil {
		return err
	}
	raw, ok := obj[RecordField]
	if !ok {
		return fmt.Errorf("%w: no tag", ErrRecord)
	}
	var tag []byte
	if err := json.Unmarshal(raw, &tag); err != nil {
		return fmt.Errorf("%w: tag is not a sealed value", ErrRecord)
	}
	want, err := k.Open(etcdKey+recordAADSuffix, tag)
	if err != nil {
		return fmt.Errorf("%w: %w", ErrRecord, err)
	}
	if !hmac.Equal(want, digest[:]) {
		return fmt.Errorf("%w: the record changed after it was signed", ErrRecord)
	}
	return nil
}

// HasRecordTag reports whether record is a JSON object with a tag member,
// whether or not the tag verifies.
func HasRecordTag(record []byte) bool {
	var obj map[string]json.RawMessage
	if json.Unmarshal(record, &obj) != nil {
		return false
	}
	_, ok := obj[RecordField]
	return ok
}

// recordDigest parses record and returns its members and the digest of its
// canonical form.
func recordDigest(record []byte) (map[string]json.RawMessage, [sha256.Size]byte, error) {
	var obj map[string]json.RawMessage
	if err := json.Unmarshal(record, &obj); err != nil || obj == nil {
		return nil, [sha256.Size]byte{}, fmt.Errorf("%w: not a JSON object", ErrRecord)
	}
	canon := make(map[string]json.RawMessage, len(obj))
	for name, raw := range obj {
		switch {
		case name == RecordField:
		case strings.HasSuffix(name, sealedSuffix):
			if s := string(raw); s != "null" && s != `""` {
				canon[name] = json.RawMessage("1")
			}
		default:
			canon[name] = raw
		}
	}
	b, err := json.Marshal(canon)
	if err != nil {
		return nil, [sha256.Size]byte{}, fmt.Errorf("%w: %v", ErrRecord, err)
	}
	return obj, sha256.Sum256(append([]byte(recordDigestInfo), b...)), nil
}
