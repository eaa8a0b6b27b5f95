// A bare Bolt for JavaScript app that verifies and acks `/jit` slash commands, as Slack's own
// framework does by default. `jit bench ack` runs it as the anchor for jit's ack throughput.
// `authorize` answers locally: the benchmark has no workspace, and Bolt would otherwise call
// auth.test on slack.com for every request.
const { App } = require("@slack/bolt");

const app = new App({
  signingSecret: process.env.SLACK_SIGNING_SECRET,
  authorize: async () => ({ botToken: "xoxb-bench-unused", botId: "B0BENCH", botUserId: "U0BENCH" }),
  endpoints: "/slack/commands",
});

app.command("/jit", async ({ ack }) => {
  await ack({ response_type: "ephemeral", text: "ok" });
});

(async () => {
  await app.start(Number(process.env.PORT));
  console.log("bolt ready");
})();
