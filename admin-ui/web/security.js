import { h } from './dom.js';

export default {
  id: 'security',
  title: 'Security',
  render(ctx, el) {
    el.append(h('p', {}, 'Coming soon.'));
  },
};
