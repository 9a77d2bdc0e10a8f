package engine

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/chromedp/chromedp"
)

// TestBrowserChatAuth drives the web app against a server that requires
// tokens, with the development token endpoint: the app gets a token for
// the name it is given, sends it with the connect op (not in the URL),
// shows the user from the token, names authors by their verified user,
// and answers the refresh push so that its connection outlives the first
// token.
func TestBrowserChatAuth(t *testing.T) {
	if testing.Short() {
		t.Skip("short")
	}
	newTab := newBrowser(t)
	const ttl = 4 * time.Second // dev tokens: the refresh push comes a second before exp
	s := startServer(t, Config{DevTokens: true, DevTokenChannels: []string{"room:*"}, DevTokenPublish: []string{"room:*"}, DevTokenTTL: ttl})
	url := "http://" + s.Addr().String() + "/"

	open := func(name string) (context.Context, time.Time) {
		tab := newTab()
		if _, err := chromedp.Run(tab, chromedp.Navigate(url)); err != nil {
			t.Fatal(err)
		}
		waitJS(t, tab, `window.fanoutApp && window.fanoutApp.authMode === "required"`)
		minted := time.Now()
		eval[bool](t, tab, fmt.Sprintf(`window.fanoutApp.join(%q, "lobby").then(() => true)`, name))
		waitJS(t, tab, `window.fanoutApp.subscribed`)
		if user := eval[string](t, tab, `window.fanoutApp.user`); user != name {
			t.Fatalf("signed in as %q, want %q", user, name)
		}
		waitJS(t, tab, fmt.Sprintf(`document.getElementById("identity").textContent.includes(%q)`, name))
		return tab, minted
	}
	alice, aliceMinted := open("alice")
	bob, _ := open("bob")
	aliceID := eval[string](t, alice, `window.fanoutApp.clientId`)

	eval[float64](t, alice, `window.fanoutApp.send("hi bob")`)
	waitJS(t, bob, `window.fanoutApp.messages.some(m => m.text === "hi bob" && m.name === "alice" && m.user === "alice" && m.verified)`)
	waitJS(t, bob, `window.fanoutApp.presence.length === 2`)

	// The token expires: the app refreshes it on the server's push and
	// keeps its connection (a closed one would come back with another id).
	waitJS(t, alice, `window.fanoutApp.refreshes >= 1`)
	time.Sleep(time.Until(aliceMinted.Add(ttl + 1500*time.Millisecond)))
	if id := eval[string](t, alice, `window.fanoutApp.clientId`); id != aliceID {
		t.Fatalf("client id %s after the first token expired, want %s (the same connection)", id, aliceID)
	}
	if state := eval[string](t, alice, `window.fanoutApp.state`); state != "online" {
		t.Fatalf("state %s after the first token expired", state)
	}
	eval[float64](t, alice, `window.fanoutApp.send("still here")`)
	waitJS(t, bob, `window.fanoutApp.messages.some(m => m.text === "still here")`)
	if errs := eval[[]map[string]any](t, alice, `window.fanoutApp.errors`); len(errs) != 0 {
		t.Fatalf("errors shown: %v", errs)
	}
}
