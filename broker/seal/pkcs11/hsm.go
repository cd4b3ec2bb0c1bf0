//go:build pkcs11

package pkcs11

import (
	"crypto/rand"
	"errors"
	"fmt"
	"sync"

	p11 "github.com/miekg/pkcs11"
)

// HSM is an open session with the token, logged in, and the KEK found in
// it. It is safe for concurrent use. Close logs out and unloads the module.
type HSM struct {
	mu   sync.Mutex
	ctx  *p11.Ctx
	sess p11.SessionHandle
	kek  p11.ObjectHandle
}

// Open loads the module, opens a session on the token labelled
// cfg.TokenLabel, logs in with cfg.PIN and finds the AES key labelled
// cfg.KeyLabel. Errors name the module, token and key, never the PIN.
func Open(cfg Config) (*HSM, error) {
	h, err := login(cfg)
	if err != nil {
		return nil, err
	}
	if h.kek, err = h.findKEK(cfg.KeyLabel); err != nil {
		h.Close()
		return nil, err
	}
	return h, nil
}

// CreateKEK creates, in the token, a non-extractable AES-256 key labelled
// cfg.KeyLabel for wrapping master keys. It fails when one exists already.
func CreateKEK(cfg Config) error {
	h, err := login(cfg)
	if err != nil {
		return err
	}
	defer h.Close()
	if _, err := h.findKEK(cfg.KeyLabel); err == nil {
		return fmt.Errorf("pkcs11: token %q holds a key labelled %q already", cfg.TokenLabel, cfg.KeyLabel)
	}
	_, err = h.ctx.GenerateKey(h.sess, []*p11.Mechanism{p11.NewMechanism(p11.CKM_AES_KEY_GEN, nil)}, []*p11.Attribute{
		p11.NewAttribute(p11.CKA_CLASS, p11.CKO_SECRET_KEY),
		p11.NewAttribute(p11.CKA_KEY_TYPE, p11.CKK_AES),
		p11.NewAttribute(p11.CKA_VALUE_LEN, kekSize),
		p11.NewAttribute(p11.CKA_LABEL, cfg.KeyLabel),
		p11.NewAttribute(p11.CKA_TOKEN, true),
		p11.NewAttribute(p11.CKA_PRIVATE, true),
		p11.NewAttribute(p11.CKA_SENSITIVE, true),
		p11.NewAttribute(p11.CKA_EXTRACTABLE, false),
		p11.NewAttribute(p11.CKA_ENCRYPT, true),
		p11.NewAttribute(p11.CKA_DECRYPT, true),
	})
	if err != nil {
		return fmt.Errorf("pkcs11: create key %q: %w", cfg.KeyLabel, err)
	}
	return nil
}

func login(cfg Config) (*HSM, error) {
	if cfg.Module == "" || cfg.TokenLabel == "" || cfg.KeyLabel == "" {
		return nil, errors.New("pkcs11: module, token label and key label are required")
	}
	ctx := p11.New(cfg.Module)
	if ctx == nil {
		return nil, fmt.Errorf("pkcs11: cannot load module %s", cfg.Module)
	}
	if err := ctx.Initialize(); err != nil {
		ctx.Destroy()
		return nil, fmt.Errorf("pkcs11: initialize %s: %w", cfg.Module, err)
	}
	h := &HSM{ctx: ctx}
	slot, err := h.slot(cfg.TokenLabel)
	if err != nil {
		h.finalize()
		return nil, err
	}
	if h.sess, err = ctx.OpenSession(slot, p11.CKF_SERIAL_SESSION|p11.CKF_RW_SESSION); err != nil {
		h.finalize()
		return nil, fmt.Errorf("pkcs11: open a session on token %q: %w", cfg.TokenLabel, err)
	}
	if err := ctx.Login(h.sess, p11.CKU_USER, cfg.PIN); err != nil {
		_ = ctx.CloseSession(h.sess)
		h.finalize()
		return nil, fmt.Errorf("pkcs11: log in to token %q: %w", cfg.TokenLabel, err)
	}
	return h, nil
}

func (h *HSM) slot(label string) (uint, error) {
	slots, err := h.ctx.GetSlotList(true)
	if err != nil {
		return 0, fmt.Errorf("pkcs11: list slots: %w", err)
	}
	for _, s := range slots {
		info, err := h.ctx.GetTokenInfo(s)
		if err == nil && info.Label == label {
			return s, nil
		}
	}
	return 0, fmt.Errorf("pkcs11: no token labelled %q", label)
}

func (h *HSM) findKEK(label string) (p11.ObjectHandle, error) {
	tmpl := []*p11.Attribute{
		p11.NewAttribute(p11.CKA_CLASS, p11.CKO_SECRET_KEY),
		p11.NewAttribute(p11.CKA_KEY_TYPE, p11.CKK_AES),
		p11.NewAttribute(p11.CKA_LABEL, label),
	}
	if err := h.ctx.FindObjectsInit(h.sess, tmpl); err != nil {
		return 0, fmt.Errorf("pkcs11: find key %q: %w", label, err)
	}
	objs, _, err := h.ctx.FindObjects(h.sess, 2)
	_ = h.ctx.FindObjectsFinal(h.sess)
	switch {
	case err != nil:
		return 0, fmt.Errorf("pkcs11: find key %q: %w", label, err)
	case len(objs) == 0:
		return 0, fmt.Errorf("pkcs11: no AES key labelled %q", label)
	case len(objs) > 1:
		return 0, fmt.Errorf("pkcs11: several AES keys labelled %q", label)
	}
	return objs[0], nil
}

// Wrap encrypts key, master key id's secret, under the KEK: the result is
// the IV followed by the GCM ciphertext and tag.
func (h *HSM) Wrap(id string, key []byte) ([]byte, error) {
	iv := make([]byte, ivSize)
	if _, err := rand.Read(iv); err != nil {
		return nil, err
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	mech := []*p11.Mechanism{p11.NewMechanism(p11.CKM_AES_GCM, p11.NewGCMParams(iv, kekAAD(id), tagBits))}
	if err := h.ctx.EncryptInit(h.sess, mech, h.kek); err != nil {
		return nil, fmt.Errorf("pkcs11: wrap key %q: %w", id, err)
	}
	ct, err := h.ctx.Encrypt(h.sess, key)
	if err != nil {
		return nil, fmt.Errorf("pkcs11: wrap key %q: %w", id, err)
	}
	return append(iv, ct...), nil
}

// Unwrap decrypts what Wrap made for id; a wrapped key that does not
// authenticate under the KEK (another KEK, another id, tampered) is an
// error.
func (h *HSM) Unwrap(id string, wrapped []byte) ([]byte, error) {
	if len(wrapped) < ivSize+tagBits/8 {
		return nil, errors.New("pkcs11: wrapped key too short")
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	mech := []*p11.Mechanism{p11.NewMechanism(p11.CKM_AES_GCM, p11.NewGCMParams(wrapped[:ivSize], kekAAD(id), tagBits))}
	if err := h.ctx.DecryptInit(h.sess, mech, h.kek); err != nil {
		return nil, fmt.Errorf("pkcs11: unwrap key %q: %w", id, err)
	}
	key, err := h.ctx.Decrypt(h.sess, wrapped[ivSize:])
	if err != nil {
		return nil, fmt.Errorf("pkcs11: unwrap key %q: does not authenticate under the token's key (%w)", id, err)
	}
	return key, nil
}

// Close logs out, closes the session and unloads the module.
func (h *HSM) Close() error {
	h.mu.Lock()
	defer h.mu.Unlock()
	_ = h.ctx.Logout(h.sess)
	_ = h.ctx.CloseSession(h.sess)
	h.finalize()
	return nil
}

func (h *HSM) finalize() {
	_ = h.ctx.Finalize()
	h.ctx.Destroy()
}
