package policy

import (
	"encoding/base64"
	"encoding/json"
	"math"
	"regexp"
	"strings"
)

// This file is the hand-kept credential detector behind the CEL functions
// has_credentials(prompt) and credential_kinds(prompt).
//
// How it works, and why it is shaped this way:
//
//   - One pass over the text finds runs of token characters ([A-Za-z0-9]
//     and "_-+/=.:") at least 20 bytes long. Credentials never contain
//     spaces or quotes and none recognised here is shorter than 20 bytes,
//     so ordinary prose is skipped mostly without looking at every byte
//     (about 0.3 ns a byte; 1-2 ns a byte for code or base64 blobs).
//   - Inside a long run, a credential is only considered where its literal
//     prefix occurs (AKIA, xoxb-, sk-ant-, ghp_, eyJ ...) at a token
//     boundary. Then an anchored regular expression checks the exact format
//     and a validator checks what a regex cannot: Shannon entropy, a mix of
//     character classes, documented placeholder values (AKIA...EXAMPLE,
//     XXXX), and for JWTs and Discord tokens that the first segment decodes
//     to what the format says it holds.
//   - Formats without a literal prefix (AWS secret keys, Azure storage keys,
//     PEM private keys) need context: an AWS secret is a 40-character
//     high-entropy string next to "aws"/"secret" or in a text that also
//     holds an AWS key id; an Azure key is an 88-character base64 string
//     ending in "==" next to "AccountKey"/"azure"/"storage"; a PEM key is
//     a "-----BEGIN ... PRIVATE KEY-----" header followed by at least 60
//     characters of high-entropy base64 (an Ed25519 key's body is 64).
//
// Talking about a credential ("how do I rotate my AWS access key?", "what
// does sk- mean", "BEGIN PRIVATE KEY is a PEM header") is not flagged: each
// of those lacks the random body a real credential has.
//
// The detector never stores, logs or returns the text it scans or the
// credentials it finds; it returns kinds only.

// credKind is one kind of credential the detector recognises.
type credKind uint8

const (
	credAWSAccessKeyID credKind = iota
	credAWSSecretKey
	credAzureStorageKey
	credGCPServiceAccount
	credPrivateKey
	credSlackToken
	credSlackWebhook
	credDiscordBotToken
	credDiscordWebhook
	credTelegramBotToken
	credOpenAIKey
	credAnthropicKey
	credHuggingFaceToken
	credGoogleAPIKey
	credGitHubToken
	credStripeKey
	credJWT
	numCredKinds
)

// credKindNames are the names credential_kinds(prompt) and CredentialKinds
// return; they are part of the policy language and must not change.
var credKindNames = [numCredKinds]string{
	credAWSAccessKeyID:    "aws_access_key_id",
	credAWSSecretKey:      "aws_secret_access_key",
	credAzureStorageKey:   "azure_storage_key",
	credGCPServiceAccount: "gcp_service_account_key",
	credPrivateKey:        "private_key",
	credSlackToken:        "slack_token",
	credSlackWebhook:      "slack_webhook",
	credDiscordBotToken:   "discord_bot_token",
	credDiscordWebhook:    "discord_webhook",
	credTelegramBotToken:  "telegram_bot_token",
	credOpenAIKey:         "openai_api_key",
	credAnthropicKey:      "anthropic_api_key",
	credHuggingFaceToken:  "huggingface_token",
	credGoogleAPIKey:      "google_api_key",
	credGitHubToken:       "github_token",
	credStripeKey:         "stripe_secret_key",
	credJWT:               "jwt",
}

// credSet is a set of credential kinds; a scan fills it without allocating.
type credSet uint32

func (s credSet) has(k credKind) bool { return s&(1<<k) != 0 }
func (s *credSet) add(k credKind)     { *s |= 1 << k }

// names returns the kinds in s, sorted by name.
func (s credSet) names() []string {
	out := make([]string, 0, 2)
	for _, k := range credKindsByName {
		if s.has(k) {
			out = append(out, credKindNames[k])
		}
	}
	return out
}

// credKindsByName lists every kind in the order of its name.
var credKindsByName = func() []credKind {
	ks := make([]credKind, 0, numCredKinds)
	for k := credKind(0); k < numCredKinds; k++ {
		ks = append(ks, k)
	}
	for i := 1; i < len(ks); i++ {
		for j := i; j > 0 && credKindNames[ks[j]] < credKindNames[ks[j-1]]; j-- {
			ks[j], ks[j-1] = ks[j-1], ks[j]
		}
	}
	return ks
}()

// HasCredentials reports whether s appears to contain a live credential:
// a cloud key, chat-platform token, LLM-provider key, GitHub or Stripe
// token, JWT or PEM private key. It backs the CEL function
// has_credentials(prompt).
func HasCredentials(s string) bool {
	return scanCredentials(s, true) != 0
}

// CredentialKinds returns the kinds of credential found in s, sorted and
// without duplicates, or an empty slice. It backs the CEL function
// credential_kinds(prompt). The names are: anthropic_api_key,
// aws_access_key_id, aws_secret_access_key, azure_storage_key,
// discord_bot_token, discord_webhook, gcp_service_account_key,
// github_token, google_api_key, huggingface_token, jwt, openai_api_key,
// private_key, slack_token, slack_webhook, stripe_secret_key,
// telegram_bot_token.
func CredentialKinds(s string) []string {
	return scanCredentials(s, false).names()
}

// minCredentialLen is the length of the shortest credential recognised (an
// AWS access key id); shorter runs of token characters are skipped.
const minCredentialLen = 20

// tokenChar marks the bytes that can occur inside a credential or the URL
// or assignment around it.
var tokenChar = func() (t [256]bool) {
	for c := '0'; c <= '9'; c++ {
		t[c] = true
	}
	for c := 'a'; c <= 'z'; c++ {
		t[c] = true
		t[c-'a'+'A'] = true
	}
	for _, c := range "_-+/=.:" {
		t[c] = true
	}
	return t
}()

// triggerChar marks the first bytes of the prefixes scanRun looks for.
var triggerChar = func() (t [256]bool) {
	for _, c := range "Axhdsrge.:" {
		t[c] = true
	}
	return t
}()

// alnumChar and base64Char are lookup tables for isAlnum and isBase64.
var alnumChar, base64Char = func() (a, b [256]bool) {
	for c := range 256 {
		a[c] = c >= '0' && c <= '9' || c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z'
		b[c] = a[c] || c == '+' || c == '/'
	}
	return a, b
}()

func isAlnum(c byte) bool { return alnumChar[c] }

func isDigit(c byte) bool { return c >= '0' && c <= '9' }

func isBase64(c byte) bool { return base64Char[c] }

func isBase64URL(c byte) bool { return isAlnum(c) || c == '-' || c == '_' }

// scanCredentials returns the kinds of credential in s; with first set it
// returns as soon as one is found.
func scanCredentials(s string, first bool) credSet {
	var found credSet
	if len(s) < minCredentialLen {
		return found
	}
	found |= scanPEM(s)
	if first && found != 0 {
		return found
	}
	var pendingAWSSecret bool // a secret-shaped string seen without context
	// Find the runs of at least minCredentialLen token characters without
	// looking at every byte: s[i-1] is never a token character, so a long
	// run starting at or after i must cover s[i+minCredentialLen-1]. If that
	// byte is not a token character, skip past it; otherwise walk back to
	// the start of its run and on to the end.
	for i := 0; i+minCredentialLen <= len(s); {
		probe := i + minCredentialLen - 1
		if !tokenChar[s[probe]] {
			i = probe + 1
			continue
		}
		start := probe
		for start > i && tokenChar[s[start-1]] {
			start--
		}
		end := probe + 1
		for end < len(s) && tokenChar[s[end]] {
			end++
		}
		i = end + 1
		if end-start < minCredentialLen {
			continue
		}
		f, pending := scanRun(s, start, end)
		found |= f
		pendingAWSSecret = pendingAWSSecret || pending
		if first && found != 0 {
			return found
		}
	}
	if pendingAWSSecret && found.has(credAWSAccessKeyID) {
		found.add(credAWSSecretKey)
	}
	return found
}

// tokenRule recognises one credential format that starts with a literal
// prefix.
type tokenRule struct {
	kind credKind
	// re matches at the start of the token; submatch 1 is the part that
	// valid checks. Every re ends by requiring a non-token byte or the end
	// of the run, so a longer token does not match.
	re *regexp.Regexp
	// valid checks submatch 1.
	valid func(tok string) bool
	// leftOK reports whether the byte before the prefix allows a token to
	// start there; nil means "not a letter or digit".
	leftOK func(c byte) bool
}

var (
	awsKeyIDRule = &tokenRule{
		kind:  credAWSAccessKeyID,
		re:    regexp.MustCompile(`^((?:AKIA|ASIA)[A-Z2-7]{16})(?:[^A-Za-z0-9]|$)`),
		valid: func(tok string) bool { return randomLooking(tok[4:], 2.5, 1) },
	}
	googleKeyRule = &tokenRule{
		kind:  credGoogleAPIKey,
		re:    regexp.MustCompile(`^(AIza[0-9A-Za-z_-]{35})(?:[^0-9A-Za-z_-]|$)`),
		valid: func(tok string) bool { return randomLooking(tok[4:], 3.5, 2) },
	}
	slackTokenRule = &tokenRule{
		kind:  credSlackToken,
		re:    regexp.MustCompile(`^(xox[abprs]-[A-Za-z0-9-]{20,250})(?:[^A-Za-z0-9-]|$)`),
		valid: validSlackToken,
	}
	slackWebhookRule = &tokenRule{
		kind: credSlackWebhook,
		re: regexp.MustCompile(`^hooks\.slack\.com/(?:services|workflows|triggers)/T[A-Z0-9]{8,12}/[A-Z0-9]{8,12}/` +
			`(?:[0-9]{6,20}/)?([A-Za-z0-9]{24,34})(?:[^A-Za-z0-9]|$)`),
		valid: func(tok string) bool { return randomLooking(tok, 3.0, 2) },
		leftOK: func(c byte) bool {
			return c == '/' || c == '.' || c == '@' || !tokenChar[c]
		},
	}
	discordWebhookRule = &tokenRule{
		kind:  credDiscordWebhook,
		re:    regexp.MustCompile(`^discord(?:app)?\.com/api/(?:v[0-9]+/)?webhooks/[0-9]{17,20}/([A-Za-z0-9_-]{60,68})(?:[^A-Za-z0-9_-]|$)`),
		valid: func(tok string) bool { return randomLooking(tok, 3.5, 2) },
	}
	discordBotRule = &tokenRule{
		kind:  credDiscordBotToken,
		re:    regexp.MustCompile(`^([MNO][A-Za-z0-9_-]{22,27}\.[A-Za-z0-9_-]{6}\.[A-Za-z0-9_-]{27,38})(?:[^A-Za-z0-9_-]|$)`),
		valid: validDiscordBotToken,
	}
	telegramRule = &tokenRule{
		kind:   credTelegramBotToken,
		re:     regexp.MustCompile(`^([0-9]{8,10}:AA[A-Za-z0-9_-]{33})(?:[^A-Za-z0-9_-]|$)`),
		valid:  func(tok string) bool { return randomLooking(tok[strings.IndexByte(tok, ':')+3:], 3.5, 2) },
		leftOK: func(c byte) bool { return !isDigit(c) },
	}
	openAIRule = &tokenRule{
		kind:  credOpenAIKey,
		re:    regexp.MustCompile(`^sk-(?:proj-|svcacct-|admin-)?([A-Za-z0-9_-]{32,250})(?:[^A-Za-z0-9_-]|$)`),
		valid: func(tok string) bool { return randomLooking(tok, 3.5, 3) },
	}
	anthropicRule = &tokenRule{
		kind:  credAnthropicKey,
		re:    regexp.MustCompile(`^sk-ant-(?:api|admin|oat|ort|sid)[0-9]{2}-([A-Za-z0-9_-]{32,250})(?:[^A-Za-z0-9_-]|$)`),
		valid: func(tok string) bool { return randomLooking(tok, 3.5, 3) },
	}
	huggingFaceRule = &tokenRule{
		kind:  credHuggingFaceToken,
		re:    regexp.MustCompile(`^hf_([A-Za-z0-9]{30,40})(?:[^A-Za-z0-9_]|$)`),
		valid: func(tok string) bool { return hasUpper(tok) && hasLower(tok) && randomLooking(tok, 3.5, 2) },
	}
	gitHubRule = &tokenRule{
		kind:  credGitHubToken,
		re:    regexp.MustCompile(`^gh[pousr]_([A-Za-z0-9]{36,251})(?:[^A-Za-z0-9_]|$)`),
		valid: func(tok string) bool { return randomLooking(tok, 3.5, 2) },
	}
	gitHubPATRule = &tokenRule{
		kind:  credGitHubToken,
		re:    regexp.MustCompile(`^github_pat_([A-Za-z0-9]{22}_[A-Za-z0-9]{59})(?:[^A-Za-z0-9_]|$)`),
		valid: func(tok string) bool { return randomLooking(tok, 3.5, 2) },
	}
	stripeRule = &tokenRule{
		kind:  credStripeKey,
		re:    regexp.MustCompile(`^[sr]k_live_([A-Za-z0-9]{24,247})(?:[^A-Za-z0-9_]|$)`),
		valid: func(tok string) bool { return randomLooking(tok, 3.5, 2) },
	}
	jwtRule = &tokenRule{
		kind:  credJWT,
		re:    regexp.MustCompile(`^(eyJ[A-Za-z0-9_-]{8,}\.ey[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{16,})(?:[^A-Za-z0-9_-]|$)`),
		valid: validJWT,
	}
)

// try checks for the rule's token at run[at:]. It returns whether a valid
// token starts there.
func (r *tokenRule) try(run string, at int) bool {
	if at > 0 {
		c := run[at-1]
		if r.leftOK != nil {
			if !r.leftOK(c) {
				return false
			}
		} else if isAlnum(c) {
			return false
		}
	}
	m := r.re.FindStringSubmatch(run[at:])
	return m != nil && r.valid(m[1])
}

// scanRun looks for credentials in s[start:end], a run of token characters
// at least minCredentialLen long. pendingAWSSecret reports a string shaped
// like an AWS secret key that had no context of its own.
func scanRun(s string, start, end int) (found credSet, pendingAWSSecret bool) {
	run := s[start:end]
	for j := 0; j < len(run); j++ {
		c := run[j]
		// Every prefix rule needs a token boundary before the prefix, so
		// only the first letter after a separator can start one; '.' and
		// ':' are checked for the formats found from the middle.
		if !triggerChar[c] || c != '.' && c != ':' && j > 0 && alnumChar[run[j-1]] {
			continue
		}
		rest := run[j:]
		switch c {
		case 'A':
			if strings.HasPrefix(rest, "AKIA") || strings.HasPrefix(rest, "ASIA") {
				if awsKeyIDRule.try(run, j) {
					found.add(credAWSAccessKeyID)
				}
			} else if strings.HasPrefix(rest, "AIza") && googleKeyRule.try(run, j) {
				found.add(credGoogleAPIKey)
			}
		case 'x':
			if strings.HasPrefix(rest, "xox") && slackTokenRule.try(run, j) {
				found.add(credSlackToken)
			}
		case 'h':
			if strings.HasPrefix(rest, "hooks.slack.com/") {
				if slackWebhookRule.try(run, j) {
					found.add(credSlackWebhook)
				}
			} else if strings.HasPrefix(rest, "hf_") && huggingFaceRule.try(run, j) {
				found.add(credHuggingFaceToken)
			}
		case 'd':
			if strings.HasPrefix(rest, "discord") && discordWebhookRule.try(run, j) {
				found.add(credDiscordWebhook)
			}
		case 's':
			if strings.HasPrefix(rest, "sk-ant-") {
				if anthropicRule.try(run, j) {
					found.add(credAnthropicKey)
				}
			} else if strings.HasPrefix(rest, "sk-") {
				if openAIRule.try(run, j) {
					found.add(credOpenAIKey)
				}
			} else if strings.HasPrefix(rest, "sk_live_") && stripeRule.try(run, j) {
				found.add(credStripeKey)
			}
		case 'r':
			if strings.HasPrefix(rest, "rk_live_") && stripeRule.try(run, j) {
				found.add(credStripeKey)
			}
		case 'g':
			if len(rest) > 4 && rest[1] == 'h' && rest[3] == '_' && strings.IndexByte("pousr", rest[2]) >= 0 {
				if gitHubRule.try(run, j) {
					found.add(credGitHubToken)
				}
			} else if strings.HasPrefix(rest, "github_pat_") && gitHubPATRule.try(run, j) {
				found.add(credGitHubToken)
			}
		case 'e':
			if strings.HasPrefix(rest, "eyJ") && jwtRule.try(run, j) {
				found.add(credJWT)
			}
		case ':':
			if strings.HasPrefix(rest, ":AA") {
				// The token starts with the bot id: 8 to 10 digits.
				k := j
				for k > 0 && j-k < 11 && isDigit(run[k-1]) {
					k--
				}
				if j-k >= 8 && telegramRule.try(run, k) {
					found.add(credTelegramBotToken)
				}
			}
		case '.':
			// A Discord bot token is base64(user id) "." 6 chars "." HMAC.
			k := j
			for k > 0 && j-k < 29 && isBase64URL(run[k-1]) {
				k--
			}
			if j-k >= 23 && (k == 0 || !isBase64URL(run[k-1])) && discordBotRule.try(run, k) {
				found.add(credDiscordBotToken)
			}
		}
	}
	// Base64 pieces without a prefix: AWS secret keys and Azure storage keys.
	for j := 0; j < len(run); {
		if !isBase64(run[j]) {
			j++
			continue
		}
		p := j
		for j < len(run) && isBase64(run[j]) {
			j++
		}
		piece := run[p:j]
		switch {
		case len(piece) == 40 && (j == len(run) || run[j] != '='):
			if !validAWSSecret(piece) {
				break
			}
			if nearFold(s, start+p, "aws", "secret") {
				found.add(credAWSSecretKey)
			} else {
				pendingAWSSecret = true
			}
		case len(piece) == 86 && strings.HasPrefix(run[j:], "==") && (j+2 == len(run) || !isBase64(run[j+2]) && run[j+2] != '='):
			if randomLooking(piece, 4.5, 3) && nearFold(s, start+p, "accountkey", "account_key", "azure", "storage") {
				found.add(credAzureStorageKey)
			}
		}
	}
	return found, pendingAWSSecret
}

// nearFold reports whether one of the lower-case words occurs, ignoring
// case, in the 64 bytes of s before offset at.
func nearFold(s string, at int, words ...string) bool {
	from := max(0, at-64)
	var buf [64]byte
	w := buf[:0]
	for i := from; i < at; i++ {
		c := s[i]
		if c >= 'A' && c <= 'Z' {
			c += 'a' - 'A'
		}
		w = append(w, c)
	}
	ctx := string(w)
	for _, word := range words {
		if strings.Contains(ctx, word) {
			return true
		}
	}
	return false
}

// validAWSSecret checks a 40-character base64 string: random-looking, with
// upper and lower case letters and digits (which rules out hex digests such
// as git commit ids), and not a path.
func validAWSSecret(p string) bool {
	if strings.Count(p, "/") > 4 || strings.Contains(p, "//") {
		return false
	}
	return hasUpper(p) && hasLower(p) && hasDigit(p) && randomLooking(p, 4.0, 3)
}

// validSlackToken checks the part after "xox?-": Slack tokens are
// dash-separated numeric ids followed by a random secret.
func validSlackToken(tok string) bool {
	body := tok[5:]
	digits := 0
	for i := 0; i < len(body); i++ {
		if isDigit(body[i]) {
			digits++
		}
	}
	last := body[strings.LastIndexByte(body, '-')+1:]
	return digits >= 8 && strings.Count(body, "-") >= 1 && len(last) >= 12 && randomLooking(last, 3.0, 2)
}

// validDiscordBotToken checks that the first segment is the base64 of a
// Discord user id (17 to 20 digits) and the last looks random.
func validDiscordBotToken(tok string) bool {
	first, rest, _ := strings.Cut(tok, ".")
	id, err := base64.RawURLEncoding.DecodeString(strings.TrimRight(first, "="))
	if err != nil || len(id) < 17 || len(id) > 20 {
		return false
	}
	for _, c := range id {
		if !isDigit(c) {
			return false
		}
	}
	_, mac, _ := strings.Cut(rest, ".")
	return randomLooking(mac, 3.5, 2)
}

// validJWT checks that the header decodes to a JSON object naming an
// algorithm, the payload to a JSON object, and the signature is present.
func validJWT(tok string) bool {
	parts := strings.SplitN(tok, ".", 4)
	if len(parts) < 3 || len(parts[0]) > 2048 {
		return false
	}
	header, err := base64.RawURLEncoding.DecodeString(parts[0])
	if err != nil {
		return false
	}
	var h map[string]any
	if err := json.Unmarshal(header, &h); err != nil {
		return false
	}
	alg, ok := h["alg"].(string)
	if !ok || alg == "" || strings.EqualFold(alg, "none") {
		return false
	}
	payload, err := base64.RawURLEncoding.DecodeString(parts[1])
	if err != nil || len(payload) == 0 || payload[0] != '{' {
		return false
	}
	return randomLooking(parts[2], 3.5, 2)
}

// pemMaxLabel bounds what may stand between "BEGIN " and "PRIVATE KEY"
// ("RSA ", "ENCRYPTED ", "OPENSSH ", "PGP " ...).
const pemMaxLabel = 24

// scanPEM finds PEM private keys: a "-----BEGIN <label>PRIVATE KEY-----" or
// "... PRIVATE KEY BLOCK-----" header followed by at least 100 characters
// of base64, possibly split by real or JSON-escaped (\n) line breaks. A key
// that follows `"private_key": "` is also a GCP service-account key.
func scanPEM(s string) credSet {
	const begin = "-----BEGIN "
	var found credSet
	for from := 0; from < len(s); {
		i := strings.Index(s[from:], "PRIVATE KEY")
		if i < 0 {
			break
		}
		at := from + i
		from = at + len("PRIVATE KEY")
		lo := max(0, at-pemMaxLabel-len(begin))
		b := strings.LastIndex(s[lo:at], begin)
		if b < 0 {
			continue
		}
		b += lo
		label := s[b+len(begin) : at]
		if strings.Trim(label, "ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789 ") != "" {
			continue
		}
		rest := strings.TrimPrefix(s[from:], " BLOCK")
		rest, ok := strings.CutPrefix(rest, "-----")
		if !ok || !pemBody(rest) {
			continue
		}
		found.add(credPrivateKey)
		if isGCPKey(s[:b]) {
			found.add(credGCPServiceAccount)
		}
	}
	return found
}

// isGCPKey reports whether before ends with `"private_key": "`, the JSON
// field of a Google Cloud service-account key file.
func isGCPKey(before string) bool {
	before, ok := strings.CutSuffix(before, `"`)
	if !ok {
		return false
	}
	before, ok = strings.CutSuffix(strings.TrimRight(before, " \t\r\n"), ":")
	if !ok {
		return false
	}
	return strings.HasSuffix(strings.TrimRight(before, " \t\r\n"), `"private_key"`)
}

// pemBody reports whether body, the text after a PEM header, holds a key:
// up to four header lines (Proc-Type:, DEK-Info:, Version:, Comment:) and
// then at least 60 random-looking base64 characters, across real or
// JSON-escaped line breaks.
func pemBody(body string) bool {
	const want = 60
	body = body[:min(len(body), 64<<10)]
	i := skipBreaks(body, 0)
	for range 4 {
		line := body[i:]
		if end := lineEnd(line); end >= 0 {
			line = line[:end]
		}
		if !strings.Contains(line, ":") {
			break
		}
		i = skipBreaks(body, i+len(line))
	}
	var sample [128]byte
	n := 0
	for i < len(body) {
		c := body[i]
		if !isBase64(c) && c != '=' {
			if j := skipBreaks(body, i); j > i {
				i = j
				continue
			}
			return false
		}
		if n < len(sample) {
			sample[n] = c
		}
		n++
		i++
		if n >= want {
			return randomLooking(string(sample[:min(n, len(sample))]), 4.5, 3)
		}
	}
	return false
}

// skipBreaks skips spaces, tabs, line breaks and JSON-escaped line breaks
// (\n, \r) from body[i:], returning the new offset.
func skipBreaks(body string, i int) int {
	for i < len(body) {
		switch c := body[i]; {
		case c == ' ' || c == '\t' || c == '\r' || c == '\n':
			i++
		case c == '\\' && i+1 < len(body) && (body[i+1] == 'n' || body[i+1] == 'r'):
			i += 2
		default:
			return i
		}
	}
	return i
}

// lineEnd returns the offset of the first real or JSON-escaped line break
// in s, or -1.
func lineEnd(s string) int {
	for i := 0; i < len(s); i++ {
		if s[i] == '\n' || s[i] == '\r' || s[i] == '\\' && i+1 < len(s) && (s[i+1] == 'n' || s[i+1] == 'r') {
			return i
		}
	}
	return -1
}

// randomLooking reports whether tok has at least minEntropy bits of Shannon
// entropy per byte, at least minClasses of {upper, lower, digit}, and no
// placeholder pattern.
func randomLooking(tok string, minEntropy float64, minClasses int) bool {
	classes := 0
	if hasUpper(tok) {
		classes++
	}
	if hasLower(tok) {
		classes++
	}
	if hasDigit(tok) {
		classes++
	}
	return classes >= minClasses && shannon(tok) >= minEntropy && !placeholder(tok)
}

// placeholders are parts of documentation example values, in lower case.
var placeholders = []string{"example", "xxxxxx", "placeholder", "redacted", "123456789", "abcdefgh"}

func placeholder(tok string) bool {
	var buf [256]byte
	if len(tok) > len(buf) {
		tok = tok[:len(buf)]
	}
	for i := 0; i < len(tok); i++ {
		c := tok[i]
		if c >= 'A' && c <= 'Z' {
			c += 'a' - 'A'
		}
		buf[i] = c
	}
	low := string(buf[:len(tok)])
	for _, p := range placeholders {
		if strings.Contains(low, p) {
			return true
		}
	}
	return false
}

// shannon returns the Shannon entropy of s in bits per byte.
func shannon(s string) float64 {
	if s == "" {
		return 0
	}
	var counts [256]uint32
	for i := 0; i < len(s); i++ {
		counts[s[i]]++
	}
	n := float64(len(s))
	h := 0.0
	for _, c := range counts {
		if c > 0 {
			p := float64(c) / n
			h -= p * math.Log2(p)
		}
	}
	return h
}

func hasUpper(s string) bool { return hasByteIn(s, 'A', 'Z') }
func hasLower(s string) bool { return hasByteIn(s, 'a', 'z') }
func hasDigit(s string) bool { return hasByteIn(s, '0', '9') }

func hasByteIn(s string, lo, hi byte) bool {
	for i := 0; i < len(s); i++ {
		if s[i] >= lo && s[i] <= hi {
			return true
		}
	}
	return false
}
