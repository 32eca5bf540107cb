// Discord's own client libraries (@discordjs/ws for the gateway, @discordjs/rest for
// REST) against a Discord API at argv[2] (the scheme, host and port of
// DISCORD_API_URL), with the bot token in DISCORD_TOKEN: connects, waits for a message
// saying "ping", uploads a file and answers "pong" in its channel. Each step is a line on stdout, so the
// test can tell how far the client got; any failure exits non-zero.
const { REST } = require('@discordjs/rest');
const { WebSocketManager, WebSocketShardEvents } = require('@discordjs/ws');
const { GatewayIntentBits, GatewayDispatchEvents, Routes } = require('discord-api-types/v10');

const api = process.argv[2];
const rest = new REST({ version: '10', api: `${api}/api`, retries: 0 }).setToken(process.env.DISCORD_TOKEN);
const manager = new WebSocketManager({
  token: process.env.DISCORD_TOKEN,
  intents: GatewayIntentBits.Guilds | GatewayIntentBits.GuildMessages
    | GatewayIntentBits.DirectMessages | GatewayIntentBits.MessageContent,
  rest,
});

const fail = (why) => {
  console.log(`FAILED ${why}`);
  process.exit(1);
};
setTimeout(() => fail('timeout'), 30000).unref();

// The reply's gateway echo and its REST answer may come in either order: exit after both.
const finished = new Set();
const done = async (what) => {
  finished.add(what);
  if (finished.has('echo') && finished.has('sent')) {
    await manager.destroy();
    process.exit(0);
  }
};

manager.on(WebSocketShardEvents.Error, (error) => fail(`gateway error: ${error}`));
manager.on(WebSocketShardEvents.Dispatch, async (event) => {
  if (event.t === GatewayDispatchEvents.Ready) {
    console.log(`READY ${event.d.user.username} ${event.d.session_id}`);
  } else if (event.t === GatewayDispatchEvents.GuildCreate) {
    console.log(`GUILD ${event.d.name} ${event.d.channels.map((c) => c.name).join(',')}`);
  } else if (event.t === GatewayDispatchEvents.MessageCreate) {
    if (event.d.author.bot) {
      if (event.d.content !== 'pong') return;
      console.log(`ECHO ${event.d.content}`);
      await done('echo');
      return;
    }
    console.log(`MESSAGE ${event.d.author.username}: ${event.d.content}`);
    if (event.d.content === 'ping') {
      try {
        await rest.post(Routes.channelMessages('999'), { body: { content: 'nowhere' } });
        fail('an unknown channel was accepted');
      } catch (error) {
        console.log(`REFUSED ${error.status} ${error.code} ${error.message}`);
      }
      try {
        const up = await rest.post(Routes.channelMessages(event.d.channel_id), {
          body: { content: 'a file', attachments: [{ id: 0, filename: 'notes.txt' }] },
          files: [{ name: 'notes.txt', data: Buffer.from('buy milk') }],
        });
        console.log(`UPLOADED ${up.attachments.map((a) => `${a.filename}:${a.size}`).join(',')}`);
      } catch (error) {
        fail(`uploading: ${error}`);
      }
      try {
        const sent = await rest.post(Routes.channelMessages(event.d.channel_id), { body: { content: 'pong' } });
        console.log(`SENT ${sent.id} ${sent.content}`);
        await done('sent');
      } catch (error) {
        fail(`sending: ${error}`);
      }
    }
  }
});

manager.connect().then(() => console.log('CONNECTED'), (error) => fail(`connecting: ${error}`));
