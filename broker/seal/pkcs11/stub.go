//go:build !pkcs11

package pkcs11

// HSM is not available in this build: Open reports ErrNotBuilt.
type HSM struct{}

// Open reports ErrNotBuilt.
func Open(Config) (*HSM, error) { return nil, ErrNotBuilt }

// CreateKEK reports ErrNotBuilt.
func CreateKEK(Config) error { return ErrNotBuilt }

// Wrap reports ErrNotBuilt.
func (*HSM) Wrap(string, []byte) ([]byte, error) { return nil, ErrNotBuilt }

// Unwrap reports ErrNotBuilt.
func (*HSM) Unwrap(string, []byte) ([]byte, error) { return nil, ErrNotBuilt }

// Close does nothing.
func (*HSM) Close() error { return nil }
